"""Storage SCP: C-ECHO and C-STORE in, durable spool write, named statuses.

Only configured peers may associate (calling AE title, optionally also the source address, and
only over TLS where the peer requires it); others are rejected at association. At most
``limits.max_associations`` associations run at once (more are rejected, transient); one silent
for ``limits.idle_timeout_s`` is aborted. The C-STORE handler writes the received bytes durably
through the :class:`~gateway.receive.Receiver` and returns (the row follows, written by the
receiver's instance writer between ``start()`` and ``stop()``); it never waits for inference.
A data set larger than :data:`~gateway.dicom.incoming.SPILL_BYTES` is written to a file on the
spool's file system as it arrives (:mod:`gateway.dicom.incoming`) and the spool takes that file,
so memory does not grow with the size of what peers send; peers are asked for P-DATA PDUs of at
most :data:`MAX_PDU_LENGTH` (a PDU is held whole in memory).

C-STORE statuses: 0x0000 stored; 0xC210 undecodable or invalid/missing UIDs; 0xC211 a UID already
recorded for another study or series (with an ErrorComment saying which); 0xA900 dataset does
not match its SOP class; 0xA700 out of resources (disk guard, study limits, storage failure).
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import (
    JPEG2000,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    EnhancedMRColorImageStorage,
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
    LegacyConvertedEnhancedMRImageStorage,
    MRImageStorage,
    MRSpectroscopyStorage,
    RLELossless,
    RTStructureSetStorage,
)
from pynetdicom import AE, evt
from pynetdicom._handlers import (
    standard_dimse_recv_handler,
    standard_dimse_sent_handler,
    standard_pdu_recv_handler,
    standard_pdu_sent_handler,
)
from pynetdicom.transport import ThreadedAssociationServer
from sqlalchemy.exc import SQLAlchemyError

from gateway.config import LimitsConfig, PeerConfig, ServerTls
from gateway.db.records import InstanceRecord
from gateway.dicom import reactor, status
from gateway.dicom.incoming import Incoming, SpillingBuffer
from gateway.dicom.tcp import set_nodelay
from gateway.errors import DatasetMismatch, InvalidInput, OutOfResources, UidConflict
from gateway.failpoints import CrashPoints
from gateway.receive.receiver import Receiver
from gateway.receive.structure_sets import RT_STRUCTURE_SET_STORAGE

log = logging.getLogger(__name__)

STORAGE_CLASSES = (
    MRImageStorage,
    EnhancedMRImageStorage,
    LegacyConvertedEnhancedMRImageStorage,
    EnhancedMRColorImageStorage,
    MRSpectroscopyStorage,
    CTImageStorage,
    RTStructureSetStorage,
)
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

# The largest P-DATA PDU we take (A-ASSOCIATE-AC Maximum Length Received): each is held whole
# in memory, and a peer told "no limit" (0) may send a 100 MB data set as one PDU (pynetdicom
# does). dcmtk sends 128 KiB PDUs whatever we say.
MAX_PDU_LENGTH = 1 << 20

# pynetdicom's "standard" log handlers decode and format every PDU and DIMSE message (at DEBUG
# level, but the work is done whatever the level): a receiver unbinds them and logs each
# association once (``_on_ended``) and in the audit trail instead. Per server and association,
# not pynetdicom's global ``_config.LOG_HANDLER_LEVEL``, so the sending side is untouched.
_STANDARD_LOG_HANDLERS = (
    (evt.EVT_DIMSE_RECV, standard_dimse_recv_handler),
    (evt.EVT_DIMSE_SENT, standard_dimse_sent_handler),
    (evt.EVT_PDU_RECV, standard_pdu_recv_handler),
    (evt.EVT_PDU_SENT, standard_pdu_sent_handler),
)

# A-ASSOCIATE-RJ: rejected-permanent, by the service user, calling AE title not recognised.
_REJECT_PERMANENT, _SERVICE_USER, _CALLING_AE_NOT_RECOGNISED = 0x01, 0x01, 0x03


def allowed_peer(
    peers: Sequence[PeerConfig], ae_title: str, address: str, tls: bool = False
) -> PeerConfig | None:
    """The allow-list entry for ``ae_title`` from ``address`` (over TLS or not), else None."""
    ae = ae_title.strip()
    for p in peers:
        if p.ae_title.strip() != ae or (p.host is not None and p.host != address):
            continue
        if p.require_tls and not tls:
            continue
        return p
    return None


def peer_allowed(peers: Sequence[PeerConfig], ae_title: str, address: str) -> bool:
    """True when ``ae_title`` (and, where configured, ``address``) may associate over plain TCP."""
    return allowed_peer(peers, ae_title, address) is not None


class _TlsAssociationServer(ThreadedAssociationServer):
    """pynetdicom's threaded server, but the TLS handshake runs in the connection's own thread
    with a timeout: pynetdicom does it in the accepting thread, so one connection that never
    completes its handshake would block every later TLS client. A failed handshake is logged
    (and audited) instead of being dropped silently."""

    handshake_timeout = 30.0
    on_refused: Any = None

    def get_request(self) -> tuple[Any, Any]:
        listener: Any = self.socket
        return listener.accept()

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            request.settimeout(self.handshake_timeout)
            context: Any = self.ssl_context
            tls = context.wrap_socket(request, server_side=True)
            tls.settimeout(None)
        except (ssl.SSLError, OSError) as exc:
            if self.on_refused is not None:
                self.on_refused(str(client_address[0]), str(exc))
            self.shutdown_request(request)
            return
        super().process_request_thread(tls, client_address)


def _unbind_log_handlers(server: Any) -> None:
    for event, handler in _STANDARD_LOG_HANDLERS:
        server.unbind(event, handler)


def _with_comment(code: int, comment: str) -> Dataset:
    """A status with an ErrorComment (LO: at most 64 characters; never patient data)."""
    rsp = Dataset()
    rsp.Status = code
    rsp.ErrorComment = comment[:64]
    return rsp


@dataclass
class _Session:
    """What one association did, for the audit trail: instances per (study, series), refusals."""

    calling_ae: str
    address: str
    tls: bool
    stored: dict[tuple[str, str], int] = field(default_factory=dict)
    refused: dict[str, int] = field(default_factory=dict)
    # Studies whose images this association sent: it counts as sending them until it ends. A
    # structure set (QA) alone opens nothing.
    opened: set[str] = field(default_factory=set)


class StorageSCP:
    """A running Storage SCP; ``start()`` returns at once, ``stop()`` shuts it down."""

    def __init__(
        self,
        ae_title: str,
        host: str,
        port: int,
        peers: Sequence[PeerConfig],
        receiver: Receiver,
        *,
        limits: LimitsConfig | None = None,
        tls: ServerTls | None = None,
        crash: CrashPoints | None = None,
    ):
        self.ae_title = ae_title
        self.host = host
        self.port = port
        self.peers = tuple(peers)
        self.receiver = receiver
        self.limits = limits or LimitsConfig()
        self.tls = tls
        self.tls_port: int | None = None
        self.crash = crash or CrashPoints()
        self._servers: list[Any] = []
        self._sessions: dict[int, _Session] = {}
        self._acks_queued: set[int] = set()  # associations with a success response going out
        self._lock = threading.Lock()

    def _make_ae(self) -> AE:
        ae = AE(ae_title=self.ae_title)
        ae.maximum_pdu_size = MAX_PDU_LENGTH
        ae.maximum_associations = self.limits.max_associations
        idle = self.limits.idle_timeout_s
        ae.network_timeout = idle  # an association silent this long is aborted
        ae.acse_timeout = min(30.0, idle)  # also: a connection that never sends A-ASSOCIATE-RQ
        ae.dimse_timeout = idle
        ae.add_supported_context(status.VERIFICATION_SOP_CLASS)
        for sop_class in STORAGE_CLASSES:
            ae.add_supported_context(sop_class, list(TRANSFER_SYNTAXES))
        return ae

    def _on_conn_open(self, event: Any) -> None:
        set_nodelay(event)
        for e, handler in _STANDARD_LOG_HANDLERS:  # bound by each Association at creation
            event.assoc.unbind(e, handler)
        # Before the association starts: event-driven waits, large data sets into files.
        reactor.install(event.assoc, Incoming(self.receiver.spool.incoming))
        # pynetdicom's idle timer runs only between PDUs: a peer that declares a long PDU and
        # sends less would hold a connection (and a slot) for ever. A socket timeout bounds
        # every read; pynetdicom treats it as the connection closing.
        sock = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
        if sock is not None:
            try:
                sock.settimeout(self.limits.idle_timeout_s)
            except OSError:
                pass  # already closed

    def _handlers(self, tls: bool) -> list[Any]:
        return [
            (evt.EVT_CONN_OPEN, self._on_conn_open),
            (evt.EVT_REQUESTED, self._on_requested, [tls]),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_RELEASED, self._on_ended, [True]),
            (evt.EVT_ABORTED, self._on_ended, [False]),
            (evt.EVT_CONN_CLOSE, self._on_ended, [False]),
        ] + (
            [(evt.EVT_DIMSE_SENT, self._on_dimse_sent), (evt.EVT_PDU_SENT, self._on_pdu_sent)]
            if self.crash.armed
            else []
        )

    def start(self) -> None:
        self.receiver.start()  # rows written behind the acknowledgement, in groups
        ae = self._make_ae()  # one AE: max_associations counts both listeners
        server: Any = ae.start_server(
            (self.host, self.port), block=False, evt_handlers=self._handlers(False)
        )
        _unbind_log_handlers(server)
        self._servers.append(server)
        self.port = server.server_address[1]
        log.info("storage SCP %s listening on %s:%d", self.ae_title, self.host, self.port)
        if self.tls is not None:
            from gateway.dicom.tls import server_context

            tls_server: Any = ae.make_server(
                (self.host, self.tls.port),
                ssl_context=server_context(self.tls),
                evt_handlers=self._handlers(True),
                server_class=_TlsAssociationServer,
            )
            _unbind_log_handlers(tls_server)
            tls_server.handshake_timeout = min(30.0, self.limits.idle_timeout_s)
            tls_server.on_refused = self._on_tls_refused
            threading.Thread(
                target=tls_server.serve_forever, name="tls-acceptor", daemon=True
            ).start()
            ae._servers.append(tls_server)  # as start_server does: AE.shutdown() stops it too
            self._servers.append(tls_server)
            self.tls_port = tls_server.server_address[1]
            log.info(
                "storage SCP %s listening with TLS on %s:%d (client certificate %s)",
                self.ae_title,
                self.host,
                self.tls_port,
                "required" if self.tls.require_client_certificate else "not required",
            )

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
        self._servers = []
        self.receiver.stop()  # the queued rows are written before stop returns

    @property
    def listening(self) -> bool:
        """Every listener started and its socket still open."""
        return bool(self._servers) and all(s.socket.fileno() != -1 for s in self._servers)

    # -- handlers --------------------------------------------------------------------------------

    def _on_tls_refused(self, address: str, reason: str) -> None:
        log.warning("TLS handshake with %s failed: %s", address, reason)
        self.receiver.audit_association("", address, "rejected", f"TLS handshake: {reason}"[:200])

    def _on_requested(self, event: Any, tls: bool) -> None:
        assoc = event.assoc
        ae_title = str(assoc.requestor.primitive.calling_ae_title).strip()
        address = assoc.requestor.address
        if allowed_peer(self.peers, ae_title, address, tls) is None:
            why = "not an allowed peer"
            if allowed_peer(self.peers, ae_title, address, True) is not None:
                why = "this peer must use the TLS port"
            log.warning("association from %r at %s rejected: %s", ae_title, address, why)
            self.receiver.audit_association(ae_title, address, "rejected", why)
            # As pynetdicom does for require_calling_aet: reject, then let the DUL flush and stop.
            assoc.acse.send_reject(_REJECT_PERMANENT, _SERVICE_USER, _CALLING_AE_NOT_RECOGNISED)
            evt.trigger(assoc, evt.EVT_REJECTED, {})
            assoc.kill()
            return
        with self._lock:
            self._sessions[id(assoc)] = _Session(ae_title, address, tls)

    def _on_echo(self, event: Any) -> int:
        return status.SUCCESS

    def _on_store(self, event: Any) -> int | Dataset:
        assoc = event.assoc
        with self._lock:
            session = self._sessions.setdefault(
                id(assoc),
                _Session(assoc.requestor.ae_title.strip(), assoc.requestor.address, False),
            )
        code, why, rec = self._store(event, session)
        with self._lock:
            if rec is None:
                session.refused[why] = session.refused.get(why, 0) + 1
                return code
            key = (rec.study_uid, rec.series_uid)
            session.stored[key] = session.stored.get(key, 0) + 1
            if rec.sop_class_uid != RT_STRUCTURE_SET_STORAGE:
                session.opened.add(rec.study_uid)
        return code

    def _store(
        self, event: Any, session: _Session
    ) -> tuple[int | Dataset, str, InstanceRecord | None]:
        """Decode, check and store one C-STORE request: (status, reason, record if stored)."""
        data_set = event.request.DataSet
        try:
            rec = self._accept(event, session)
        except UidConflict as exc:
            log.warning("C-STORE refused (0xC211): %s", exc)
            return _with_comment(status.UID_CONFLICT, exc.reason), exc.reason, None
        except DatasetMismatch as exc:
            log.warning("C-STORE refused (0xA900): %s", exc)
            return status.DATASET_DOES_NOT_MATCH_SOP_CLASS, "dataset does not match SOP class", None
        except InvalidInput as exc:
            log.warning("C-STORE refused (0xC210): %s", exc)
            return status.CANNOT_UNDERSTAND, "invalid or missing UIDs", None
        except OutOfResources as exc:
            log.error("C-STORE refused (0xA700): %s", exc)
            return status.OUT_OF_RESOURCES, str(exc).split(":")[0], None
        except (OSError, SQLAlchemyError) as exc:
            log.error("C-STORE failed to store durably (0xA700): %s", type(exc).__name__)
            return status.OUT_OF_RESOURCES, "storage failure", None
        except Exception as exc:  # undecodable dataset: never answer success
            log.warning("C-STORE could not be decoded (0xC210): %s", type(exc).__name__)
            return status.CANNOT_UNDERSTAND, "undecodable dataset", None
        finally:
            if isinstance(data_set, SpillingBuffer):
                data_set.discard()  # its file, unless the spool took it; its memory
        return status.SUCCESS, "", rec

    def _accept(self, event: Any, session: _Session) -> InstanceRecord:
        assoc = event.assoc
        options: dict[str, Any] = {
            "sop_class_uid": str(event.request.AffectedSOPClassUID),
            "transfer_syntax": str(event.context.transfer_syntax),
            "opens": lambda study: study not in session.opened,
        }
        who = (assoc.requestor.ae_title.strip(), assoc.acceptor.ae_title.strip())
        data_set = event.request.DataSet
        path = data_set.finish() if isinstance(data_set, SpillingBuffer) else None
        if path is not None:  # a large data set, in a file: never loaded whole
            return self.receiver.accept_file(path, *who, **options)
        return self.receiver.accept(event.dataset, event.encoded_dataset(), *who, **options)

    def _on_dimse_sent(self, event: Any) -> None:
        # Fires before the response is encoded and written: note it, and let the crash point
        # fire once its last command fragment has gone out (_on_pdu_sent).
        message = event.message
        if type(message).__name__ == "C_STORE_RSP" and message.command_set.Status == 0:
            with self._lock:
                self._acks_queued.add(id(event.assoc))

    def _on_pdu_sent(self, event: Any) -> None:
        if id(event.assoc) not in self._acks_queued or type(event.pdu).__name__ != "P_DATA_TF":
            return
        for pdv in event.pdu.presentation_data_value_items:
            if pdv.data[0] & 0x03 == 0x03:  # the last fragment of a command: response sent
                with self._lock:
                    self._acks_queued.discard(id(event.assoc))
                self.crash.hit("receive.after_ack")

    def _on_ended(self, event: Any, released: bool) -> None:
        """The first of released / aborted / connection closed for an association ends it."""
        with self._lock:
            session = self._sessions.pop(id(event.assoc), None)
        if session is None:
            return
        log.info(
            "association from %r at %s %s: %d instance(s) stored, %d refused",
            session.calling_ae,
            session.address,
            "released" if released else "ended without release",
            sum(session.stored.values()),
            sum(session.refused.values()),
        )
        self.receiver.association_ended(
            session.calling_ae,
            session.address,
            session.stored,
            session.refused,
            session.tls,
            clean=released,
            opened=session.opened,
        )
