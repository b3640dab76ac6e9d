"""C-STORE of the encoded bytes: a file's dataset leaves as it lies on disk, never decoded.

pynetdicom 3.0's ``Association.send_c_store(path)`` decodes and re-encodes every file unless
the module-global ``_config.STORE_SEND_CHUNKED_DATASET`` is set (a global we do not touch), and
its pause of the association's reactor races: it waits for ``_is_paused``, which the reactor
also sets for an instant on its way *through* an open checkpoint, so now and then the reactor
takes the C-STORE response off the queue and the sender waits out the DIMSE timeout (compare
pynetdicom issue 875). Here a batch goes straight to the association's DUL as P-DATA (the
command set built directly, byte for byte what pynetdicom would send, the dataset as read from
the file) with the reactor held paused for the whole batch, "paused" meaning seen blocked on
its checkpoint; answers come from the DIMSE provider's queue as before.

Pinned to pynetdicom 3.0 (``Association._reactor_checkpoint``, ``_run_reactor``,
``dul.send_pdu``, ``dimse.get_msg``); tests/unit/test_cstore.py checks the hold and the encoding
against the installed version. On another layout the hold falls back to pynetdicom's own
check, and a lost response is still caught (:class:`LostResponse`, retried by the callers).
"""

from __future__ import annotations

import logging
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import evt
from pynetdicom._handlers import (
    standard_dimse_recv_handler,
    standard_dimse_sent_handler,
    standard_pdu_recv_handler,
    standard_pdu_sent_handler,
)
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode, split_dataset
from pynetdicom.pdu_primitives import P_DATA

from gateway.errors import DeliveryRejected, PeerUnavailable

log = logging.getLogger(__name__)

# Encodings pydicom converts between without a codec: a file in one of them can still go out
# when the peer refuses its own transfer syntax (decoded and re-encoded, the slow way).
CONVERTIBLE = frozenset(
    {
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
        ExplicitVRBigEndian,
        DeflatedExplicitVRLittleEndian,
    }
)
FALLBACK_SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
MAX_CONTEXTS = 128
PRIORITY_LOW = 2
# pynetdicom's DUL thread sleeps this long whenever it finds nothing to do (1 ms by default):
# a sender waiting for each response pays it once per instance. 50 us measured best on 2 cores
# (164 MR instances: 1 ms 0.45 s, 200 us 0.20 s, 50 us 0.17 s, 20 us worse: contention).
SEND_LOOP_DELAY_S = 50e-6


class LostResponse(PeerUnavailable):
    """No C-STORE response came back (timeout, abort, or a response taken by another reader).

    ``acknowledged`` items of the batch were answered before it; sending the rest again is
    safe: a resend carries the same SOP Instance UIDs."""

    def __init__(self, message: str, acknowledged: int):
        super().__init__(message)
        self.acknowledged = acknowledged


@dataclass(frozen=True)
class Outgoing:
    """One instance to send: a file (the dataset starts at ``offset``) or a dataset."""

    sop_class: str
    sop_instance: str
    transfer_syntax: str
    path: Path | None = None
    offset: int = 0
    dataset: Dataset | None = None

    def raw(self) -> bytes:
        """The dataset as encoded in the file (no File Meta Information)."""
        assert self.path is not None
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            return f.read()

    def encoded_as(self, syntax: UID) -> bytes:
        """The dataset encoded in ``syntax`` (decoding the file first when there is one)."""
        if self.dataset is not None:
            ds = self.dataset
        else:
            assert self.path is not None
            ds = dcmread(self.path, force=True)
        data = encode(ds, syntax.is_implicit_VR, syntax.is_little_endian, syntax.is_deflated)
        if data is None:
            raise DeliveryRejected(f"cannot encode {self.sop_instance} as {syntax.name}")
        return data


def _from_dataset(ds: Dataset, path: Path | None = None) -> Outgoing:
    meta = getattr(ds, "file_meta", None)
    syntax = getattr(meta, "TransferSyntaxUID", None) or ExplicitVRLittleEndian
    return Outgoing(str(ds.SOPClassUID), str(ds.SOPInstanceUID), str(syntax), path, 0, ds)


def prepare(item: Path | Dataset) -> Outgoing:
    """Read only what negotiation needs: a file's File Meta Information (about 40 us)."""
    if isinstance(item, Dataset):
        return _from_dataset(item)
    path = Path(item)
    try:
        meta, offset = split_dataset(path)
    except (InvalidDicomError, EOFError):
        meta, offset = Dataset(), 0
    keys = ("MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID", "TransferSyntaxUID")
    if all(k in meta for k in keys):
        return Outgoing(
            str(meta.MediaStorageSOPClassUID),
            str(meta.MediaStorageSOPInstanceUID),
            str(meta.TransferSyntaxUID),
            path,
            offset,
        )
    # No usable file meta: decoded once here, and sent re-encoded.
    return _from_dataset(dcmread(path, force=True), path)


def contexts(items: Sequence[Outgoing]) -> list[tuple[str, list[str]]]:
    """Presentation contexts to request: each (SOP class, transfer syntax) as it is, so the
    bytes go out unchanged, then per SOP class one context that allows a conversion."""
    exact = sorted({(o.sop_class, o.transfer_syntax) for o in items})
    if len(exact) > MAX_CONTEXTS:
        raise DeliveryRejected(f"more than {MAX_CONTEXTS} presentation contexts in one send")
    wanted: list[tuple[str, list[str]]] = [(s, [t]) for s, t in exact]
    convertible = sorted({o.sop_class for o in items if o.transfer_syntax in CONVERTIBLE})
    for sop_class in convertible[: MAX_CONTEXTS - len(wanted)]:
        wanted.append((sop_class, list(FALLBACK_SYNTAXES)))
    return wanted


def _payload(assoc: Association, item: Outgoing) -> tuple[int, bytes]:
    """The accepted context to use and the bytes to send in it."""
    accepted = [
        (int(cx.context_id), UID(cx.transfer_syntax[0]))
        for cx in assoc.accepted_contexts
        if cx.abstract_syntax == item.sop_class and cx.context_id is not None
    ]
    for cx_id, syntax in accepted:
        if syntax == item.transfer_syntax:
            if item.dataset is None:
                return cx_id, item.raw()
            return cx_id, item.encoded_as(syntax)
    if item.transfer_syntax in CONVERTIBLE:
        for cx_id, syntax in accepted:
            if syntax in CONVERTIBLE:
                return cx_id, item.encoded_as(syntax)
    raise DeliveryRejected(
        f"the peer accepted no presentation context for {item.sop_class} "
        f"in {item.transfer_syntax} or one it can be converted to"
    )


def tune_for_sending(assoc: Association) -> None:
    """Shorten this association's DUL idle sleep and drop pynetdicom's per-message and
    per-PDU log handlers once it is established (they build an event record and format every
    command set; our own log says what was sent). Per association: nothing global changes."""
    if hasattr(assoc.dul, "_run_loop_delay"):
        assoc.dul._run_loop_delay = SEND_LOOP_DELAY_S
    for event, handler in (
        (evt.EVT_DIMSE_SENT, standard_dimse_sent_handler),
        (evt.EVT_DIMSE_RECV, standard_dimse_recv_handler),
        (evt.EVT_PDU_SENT, standard_pdu_sent_handler),
        (evt.EVT_PDU_RECV, standard_pdu_recv_handler),
    ):
        assoc.unbind(event, handler)


_REACTOR = getattr(Association, "_run_reactor", None)


def _blocked_on_checkpoint(assoc: Association) -> bool:
    """True when the association's thread sits in ``Event.wait`` inside ``_run_reactor``:
    it read the checkpoint cleared and can only go on once it is set again."""
    frame = sys._current_frames().get(assoc.ident or -1)
    if frame is None or frame.f_code is not threading.Condition.wait.__code__:
        return False
    caller = frame.f_back
    if caller is None or caller.f_code is not threading.Event.wait.__code__:
        return False
    return caller.f_back is not None and caller.f_back.f_code is getattr(_REACTOR, "__code__", 0)


@contextmanager
def reactor_held(assoc: Association, timeout: float = 2.0) -> Iterator[None]:
    """Keep the association's reactor off the DIMSE queue while a batch is sent."""
    checkpoint: threading.Event = assoc._reactor_checkpoint
    checkpoint.clear()
    try:
        deadline = time.monotonic() + timeout
        while not _blocked_on_checkpoint(assoc):
            if not assoc.is_alive():
                raise PeerUnavailable("association ended before sending")
            if time.monotonic() > deadline:
                if not assoc._is_paused:
                    raise PeerUnavailable("association reactor did not pause")
                log.warning("pynetdicom's reactor not recognised; relying on its pause flag")
                break
            time.sleep(0.0002)
        yield
    finally:
        checkpoint.set()


def _element(tag: int, value: bytes) -> bytes:
    """One Implicit VR Little Endian element of group 0000."""
    return struct.pack("<HHI", 0x0000, tag, len(value)) + value


def _ui(uid: str) -> bytes:
    """A UID value, padded to even length. UIDs come from the files (untrusted): as lenient
    as storescu, but never one that is not ASCII or longer than 64."""
    raw = uid.encode("ascii", errors="replace")
    if len(raw) > 64 or b"?" in raw:
        raise DeliveryRejected(f"not a UID: {uid[:80]!r}")
    return raw + b"\x00" * (len(raw) % 2)


def c_store_rq(msg_id: int, sop_class: str, sop_instance: str) -> bytes:
    """The C-STORE-RQ command set (PS3.7 9.3.1.1), as pynetdicom encodes it, built directly:
    pynetdicom builds a pydicom Dataset and encodes it twice (0.2 ms of 0.8 per instance)."""
    body = b"".join(
        (
            _element(0x0002, _ui(sop_class)),  # Affected SOP Class UID
            _element(0x0100, struct.pack("<H", 0x0001)),  # Command Field: C-STORE-RQ
            _element(0x0110, struct.pack("<H", msg_id)),  # Message ID
            _element(0x0700, struct.pack("<H", PRIORITY_LOW)),  # Priority
            _element(0x0800, struct.pack("<H", 0x0001)),  # Command Data Set Type: present
            _element(0x1000, _ui(sop_instance)),  # Affected SOP Instance UID
        )
    )
    return _element(0x0000, struct.pack("<I", len(body))) + body


def p_data(context_id: int, command: bytes, data: bytes, max_pdu: int) -> Iterator[P_DATA]:
    """The P-DATA primitives of one message: command then data fragments, each PDV within
    the peer's maximum PDU length (0: unlimited), as pynetdicom's ``encode_msg`` yields them."""
    size = len(command) + len(data) + 1 if max_pdu == 0 else max_pdu - 6
    for payload, more, last in ((command, 0x01, 0x03), (data, 0x00, 0x02)):
        chunks = [payload[i : i + size] for i in range(0, len(payload), size)]
        for k, chunk in enumerate(chunks, 1):
            pdata = P_DATA()
            header = last if k == len(chunks) else more
            pdata.presentation_data_value_list.append((context_id, bytes([header]) + chunk))
            yield pdata


def send_all(
    assoc: Association,
    items: Sequence[Outgoing],
    on_status: Callable[[int, int], None],
) -> None:
    """C-STORE ``items`` in order over ``assoc``; ``on_status(n, code)`` after each answer.

    Raises LostResponse (the association aborted) when an answer does not come back, and
    DeliveryRejected when an item fits no accepted context."""
    with reactor_held(assoc):
        for n, item in enumerate(items, 1):
            cx_id, data = _payload(assoc, item)
            command = c_store_rq(n % 65536, item.sop_class, item.sop_instance)
            for pdata in p_data(cx_id, command, data, assoc.dimse.maximum_pdu_size):
                assoc.dul.send_pdu(pdata)
            code = _response(assoc, n % 65536)
            if code is None:
                if assoc.is_established:
                    assoc.abort()
                raise LostResponse("no C-STORE response (connection lost?)", n - 1)
            on_status(n, code)


def _response(assoc: Association, msg_id: int) -> int | None:
    """The status answering ``msg_id``; None when none came within the DIMSE timeout."""
    _, rsp = assoc.dimse.get_msg(block=True)
    if (
        isinstance(rsp, C_STORE)
        and rsp.MessageIDBeingRespondedTo == msg_id
        and rsp.is_valid_response
        and rsp.Status is not None
    ):
        return int(rsp.Status)
    if rsp is not None:
        log.error("unexpected DIMSE message instead of the C-STORE response")
    return None
