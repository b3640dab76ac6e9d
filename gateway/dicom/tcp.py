"""Socket tuning for pynetdicom associations.

pynetdicom leaves Nagle's algorithm on. A DIMSE exchange is a small command PDU, a data PDU and a
small response: with Nagle and delayed ACKs each exchange can stall for tens of milliseconds on
loopback (dcmtk shows the same without TCP_NODELAY). Bound to EVT_CONN_OPEN on both sides.
"""

from __future__ import annotations

import socket
from typing import Any


def set_nodelay(event: Any) -> None:
    transport = getattr(event.assoc.dul, "socket", None)
    sock = getattr(transport, "socket", None)
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass  # not a TCP socket, or already closed
