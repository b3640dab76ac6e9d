"""Storage SCP: C-ECHO and C-STORE in, durable spool write, named statuses.

Only configured peers may associate (calling AE title, optionally also the source host); others
are rejected at association. The C-STORE handler writes the received bytes durably through the
:class:`~gateway.receive.Receiver` and returns; it never waits for inference.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

from pydicom.uid import (
    JPEG2000,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    EnhancedMRImageStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    MRImageStorage,
    RLELossless,
    RTStructureSetStorage,
)
from pynetdicom import AE, evt
from sqlalchemy.exc import SQLAlchemyError

from gateway.config import PeerConfig
from gateway.dicom import status
from gateway.dicom.tcp import set_nodelay
from gateway.errors import InvalidInput
from gateway.receive import Receiver

log = logging.getLogger(__name__)

STORAGE_CLASSES = (MRImageStorage, EnhancedMRImageStorage, CTImageStorage, RTStructureSetStorage)
TRANSFER_SYNTAXES = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
)

# A-ASSOCIATE-RJ: rejected-permanent, by the service user, calling AE title not recognised.
_REJECT_PERMANENT, _SERVICE_USER, _CALLING_AE_NOT_RECOGNISED = 0x01, 0x01, 0x03


def peer_allowed(peers: Sequence[PeerConfig], ae_title: str, address: str) -> bool:
    """True when ``ae_title`` (and, where configured, ``address``) is on the allow-list."""
    ae = ae_title.strip()
    return any(p.ae_title.strip() == ae and (p.host is None or p.host == address) for p in peers)


class StorageSCP:
    """A running Storage SCP; ``start()`` returns at once, ``stop()`` shuts it down."""

    def __init__(
        self,
        ae_title: str,
        host: str,
        port: int,
        peers: Sequence[PeerConfig],
        receiver: Receiver,
    ):
        self.ae_title = ae_title
        self.host = host
        self.port = port
        self.peers = tuple(peers)
        self.receiver = receiver
        self._server: Any = None
        self._touched: dict[int, set[str]] = {}
        self._lock = threading.Lock()

    def _make_ae(self) -> AE:
        ae = AE(ae_title=self.ae_title)
        ae.maximum_pdu_size = 0  # no limit: fewer, larger P-DATA PDUs
        ae.dimse_timeout = 60
        ae.network_timeout = 60
        ae.acse_timeout = 30
        ae.add_supported_context(status.VERIFICATION_SOP_CLASS)
        for sop_class in STORAGE_CLASSES:
            ae.add_supported_context(sop_class, list(TRANSFER_SYNTAXES))
        return ae

    def start(self) -> None:
        handlers: list[Any] = [
            (evt.EVT_CONN_OPEN, set_nodelay),
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_RELEASED, self._on_ended),
            (evt.EVT_ABORTED, self._on_ended),
            (evt.EVT_CONN_CLOSE, self._on_ended),
        ]
        self._server = self._make_ae().start_server(
            (self.host, self.port), block=False, evt_handlers=handlers
        )
        self.port = self._server.server_address[1]
        log.info("storage SCP %s listening on %s:%d", self.ae_title, self.host, self.port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    # -- handlers --------------------------------------------------------------------------------

    def _on_requested(self, event: Any) -> None:
        assoc = event.assoc
        ae_title = str(assoc.requestor.primitive.calling_ae_title).strip()
        if not peer_allowed(self.peers, ae_title, assoc.requestor.address):
            log.warning(
                "association from %r at %s rejected: not an allowed peer",
                ae_title,
                assoc.requestor.address,
            )
            # As pynetdicom does for require_calling_aet: reject, then let the DUL flush and stop.
            assoc.acse.send_reject(_REJECT_PERMANENT, _SERVICE_USER, _CALLING_AE_NOT_RECOGNISED)
            evt.trigger(assoc, evt.EVT_REJECTED, {})
            assoc.kill()

    def _on_echo(self, event: Any) -> int:
        return status.SUCCESS

    def _on_store(self, event: Any) -> int:
        assoc = event.assoc
        try:
            ds = event.dataset
            encoded = event.encoded_dataset()
            calling = assoc.requestor.ae_title.strip()
            called = assoc.acceptor.ae_title.strip()
            study_uid = self.receiver.accept(ds, encoded, calling, called)
        except InvalidInput as exc:
            log.warning("C-STORE refused (0xC210): %s", exc)
            return status.CANNOT_UNDERSTAND
        except (OSError, SQLAlchemyError) as exc:
            log.error("C-STORE failed to store durably (0xA700): %s", type(exc).__name__)
            return status.OUT_OF_RESOURCES
        except Exception as exc:  # undecodable dataset: never answer success
            log.warning("C-STORE could not be decoded (0xC210): %s", type(exc).__name__)
            return status.CANNOT_UNDERSTAND
        with self._lock:
            studies = self._touched.setdefault(id(assoc), set())
            first = study_uid not in studies
            studies.add(study_uid)
        if first:
            self.receiver.studies_complete({study_uid})
        return status.SUCCESS

    def _on_ended(self, event: Any) -> None:
        with self._lock:
            studies = self._touched.pop(id(event.assoc), set())
        if studies:
            self.receiver.studies_complete(studies)
