"""A minimal receiving node (a stand-in planning system) for the demo and tests.

It accepts any calling AE, stores every instance it receives under ``folder`` by SOP Instance
UID (a resend overwrites: one file per UID), records every receipt in order (``receipts``,
repeats included), and can be stopped and restarted on the same port. For fault tests its
behaviour can be switched at run time (``mode``):

    ok       store and answer 0x0000
    reject   reject every association (A-ASSOCIATE-RJ, transient)
    fail     answer C-STORE with 0xC000 (a failure status)
    busy     answer C-STORE with 0xA700 (out of resources)
    hang     wait ``hang_s`` seconds before storing and answering

``on_store`` (optional) is called with each dataset before anything else (a fault harness can
kill the sender there, mid-transfer). ``tls`` (an ``ssl.SSLContext``) makes it a TLS peer.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pynetdicom import AE, evt

from gateway.dicom.scp import STORAGE_CLASSES, TRANSFER_SYNTAXES
from gateway.dicom.status import (
    CANNOT_UNDERSTAND,
    OUT_OF_RESOURCES,
    SUCCESS,
    VERIFICATION_SOP_CLASS,
)
from gateway.dicom.tcp import set_nodelay
from gateway.uids import is_valid_uid

log = logging.getLogger(__name__)

MODES = ("ok", "reject", "fail", "busy", "hang")
_FAILURE = 0xC000
# A-ASSOCIATE-RJ: rejected-transient, by the service provider (presentation), temporary congestion.
_REJECT_TRANSIENT, _SERVICE_PROVIDER_PRES, _TEMPORARY_CONGESTION = 0x02, 0x03, 0x01


class ReceivingNode:
    def __init__(
        self,
        folder: Path,
        ae_title: str = "PLANNING",
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        tls: ssl.SSLContext | None = None,
    ):
        self.folder = folder
        self.ae_title = ae_title
        self.host = host
        self.port = port
        self.tls = tls
        self.mode = "ok"
        self.hang_s = 60.0
        self.on_store: Callable[[Any], None] | None = None
        self.receipts: list[str] = []  # SOP Instance UIDs in order of receipt, repeats included
        self.received = threading.Event()
        self._server: Any = None
        self._lock = threading.Lock()

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        ae = AE(ae_title=self.ae_title)
        ae.add_supported_context(VERIFICATION_SOP_CLASS)
        for sop_class in STORAGE_CLASSES:
            ae.add_supported_context(sop_class, list(TRANSFER_SYNTAXES))
        ae.network_timeout = ae.dimse_timeout = 300
        self._server = ae.start_server(
            (self.host, self.port),
            block=False,
            ssl_context=self.tls,
            evt_handlers=[
                (evt.EVT_CONN_OPEN, set_nodelay),
                (evt.EVT_REQUESTED, self._on_requested),
                (evt.EVT_C_STORE, self._on_store),
                (evt.EVT_C_ECHO, lambda e: SUCCESS),
            ],
        )
        self.port = self._server.server_address[1]

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def files(self) -> list[Path]:
        return sorted(self.folder.glob("*.dcm"))

    def _on_requested(self, event: Any) -> None:
        if self.mode == "reject":
            assoc = event.assoc
            assoc.acse.send_reject(_REJECT_TRANSIENT, _SERVICE_PROVIDER_PRES, _TEMPORARY_CONGESTION)
            evt.trigger(assoc, evt.EVT_REJECTED, {})
            assoc.kill()

    def _on_store(self, event: Any) -> int:
        if self.on_store is not None:
            self.on_store(event.dataset)
        mode = self.mode
        if mode == "fail":
            return _FAILURE
        if mode == "busy":
            return OUT_OF_RESOURCES
        if mode == "hang":
            time.sleep(self.hang_s)
        uid = event.request.AffectedSOPInstanceUID
        if not is_valid_uid(uid):
            return CANNOT_UNDERSTAND
        (self.folder / f"{uid}.dcm").write_bytes(event.encoded_dataset())
        with self._lock:
            self.receipts.append(str(uid))
        self.received.set()
        return SUCCESS
