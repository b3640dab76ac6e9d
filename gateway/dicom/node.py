"""A minimal receiving node (a stand-in planning system) for the demo and tests.

It accepts any calling AE, stores every instance it receives under ``folder`` by SOP Instance
UID (a resend overwrites: one file per UID), and can be stopped and restarted on the same port.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from pynetdicom import AE, evt

from gateway.dicom.scp import STORAGE_CLASSES, TRANSFER_SYNTAXES
from gateway.dicom.status import CANNOT_UNDERSTAND, SUCCESS, VERIFICATION_SOP_CLASS
from gateway.dicom.tcp import set_nodelay
from gateway.uids import is_valid_uid

log = logging.getLogger(__name__)


class ReceivingNode:
    def __init__(
        self, folder: Path, ae_title: str = "PLANNING", host: str = "127.0.0.1", port: int = 0
    ):
        self.folder = folder
        self.ae_title = ae_title
        self.host = host
        self.port = port
        self.received = threading.Event()
        self._server: Any = None

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        ae = AE(ae_title=self.ae_title)
        ae.add_supported_context(VERIFICATION_SOP_CLASS)
        for sop_class in STORAGE_CLASSES:
            ae.add_supported_context(sop_class, list(TRANSFER_SYNTAXES))
        self._server = ae.start_server(
            (self.host, self.port),
            block=False,
            evt_handlers=[
                (evt.EVT_CONN_OPEN, set_nodelay),
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

    def _on_store(self, event: Any) -> int:
        uid = event.request.AffectedSOPInstanceUID
        if not is_valid_uid(uid):
            return CANNOT_UNDERSTAND
        (self.folder / f"{uid}.dcm").write_bytes(event.encoded_dataset())
        self.received.set()
        return SUCCESS
