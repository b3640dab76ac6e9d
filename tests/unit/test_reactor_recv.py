"""The receiving side's socket read (gateway/dicom/reactor.py): a PDU length is the peer's
word, so memory follows the bytes that arrive, not the length a header declares."""

from __future__ import annotations

import socket
import threading
import tracemalloc
from types import SimpleNamespace

from gateway.dicom.reactor import READ_CHUNK, _recv


def test_a_header_declaring_gigabytes_allocates_only_what_arrives() -> None:
    ours, theirs = socket.socketpair()
    try:
        theirs.sendall(b"x" * 10)
        theirs.close()  # a peer that declared 1 GiB and sent ten bytes
        tracemalloc.start()
        data = _recv(SimpleNamespace(socket=ours), 1 << 30)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    finally:
        ours.close()
    assert bytes(data) == b"x" * 10
    assert peak < 4 * READ_CHUNK  # not 1 GiB


def test_a_pdu_larger_than_a_chunk_arrives_whole() -> None:
    ours, theirs = socket.socketpair()
    payload = bytes(range(256)) * (3 * READ_CHUNK // 256 + 7)
    sender = threading.Thread(target=theirs.sendall, args=(payload,))
    sender.start()
    try:
        data = _recv(SimpleNamespace(socket=ours), len(payload))
    finally:
        sender.join()
        ours.close()
        theirs.close()
    assert bytes(data) == payload
