"""SCU side: C-ECHO and C-STORE to peers, responses classified as retriable or permanent."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.status import code_to_category

from gateway.config import DestinationConfig
from gateway.dicom import cstore
from gateway.dicom.status import OUT_OF_RESOURCES, PROCESSING_FAILURE, VERIFICATION_SOP_CLASS
from gateway.dicom.tcp import set_nodelay
from gateway.errors import DeliveryRejected, PeerBusy, PeerUnavailable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EchoResult:
    ok: bool
    detail: str


def _ae(calling_ae: str, timeout: float) -> AE:
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = timeout
    ae.dimse_timeout = timeout
    ae.network_timeout = timeout
    ae.connection_timeout = timeout
    return ae


def _tls_args(dest: DestinationConfig) -> tuple[Any, str] | None:
    if dest.tls is None:
        return None
    from gateway.dicom.tls import client_context

    return client_context(dest.tls), dest.host


def _associate(ae: AE, dest: DestinationConfig) -> Any:
    return ae.associate(
        dest.host,
        dest.port,
        ae_title=dest.ae_title,
        tls_args=_tls_args(dest),
        evt_handlers=[(evt.EVT_CONN_OPEN, set_nodelay)],
    )


def echo(dest: DestinationConfig, calling_ae: str, timeout: float = 10.0) -> EchoResult:
    """C-ECHO ``dest`` (over TLS when configured); never raises for network problems."""
    ae = _ae(calling_ae, timeout)
    ae.add_requested_context(VERIFICATION_SOP_CLASS)
    try:
        assoc = _associate(ae, dest)
    except (OSError, ValueError) as exc:  # TLS set-up: unreadable certificate or key
        return EchoResult(False, f"TLS set-up failed: {exc}")
    if not assoc.is_established:
        why = "association rejected" if assoc.is_rejected else "no association (peer down?)"
        return EchoResult(False, why)
    try:
        rsp = assoc.send_c_echo()
    finally:
        assoc.release()
    code = getattr(rsp, "Status", None)
    if code is None:
        return EchoResult(False, "no response")
    return EchoResult(code == 0, f"status 0x{code:04X}")


def classify(code: int) -> type[Exception] | None:
    """None for success/warning; else the exception class to raise for this status."""
    category = code_to_category(code)
    if category in ("Success", "Warning"):
        return None
    if (code & 0xFF00) == OUT_OF_RESOURCES or code in (PROCESSING_FAILURE, 0x0213):
        return PeerBusy
    return DeliveryRejected


def store(
    dest: DestinationConfig,
    calling_ae: str,
    files: Sequence[Path | Dataset],
    *,
    timeout: float = 30.0,
    progress: Callable[[int], None] | None = None,
    before_send: Callable[[], None] | None = None,
    lost_retries: int = 0,
) -> list[int]:
    """C-STORE ``files`` over one association; return the status of each.

    A file goes out as its encoded bytes (see :mod:`gateway.dicom.cstore`); a Dataset, or a
    file the peer takes only in another transfer syntax, is encoded for the accepted one.
    Raises PeerUnavailable when no association could be made or it broke (LostResponse when
    an answer did not come back), PeerBusy or DeliveryRejected on the first failure status
    (as classified by :func:`classify`). With ``lost_retries``, what a lost answer left
    unacknowledged goes again over a new association, that many times at most: resending is
    safe, the instances keep their SOP Instance UIDs.
    """
    items = [cstore.prepare(f) for f in files]
    statuses: list[int] = []
    for attempt in range(lost_retries + 1):
        try:
            _store_items(
                dest, calling_ae, items[len(statuses) :], statuses, timeout, progress, before_send
            )
            break
        except cstore.LostResponse:
            if attempt == lost_retries:
                raise
            log.warning(
                "%s: no answer to instance %d of %d; sending the rest again",
                dest.ae_title,
                len(statuses) + 1,
                len(items),
            )
    return statuses


def _store_items(
    dest: DestinationConfig,
    calling_ae: str,
    items: Sequence[cstore.Outgoing],
    statuses: list[int],
    timeout: float,
    progress: Callable[[int], None] | None,
    before_send: Callable[[], None] | None,
) -> None:
    ae = _ae(calling_ae, timeout)
    for sop_class, syntaxes in cstore.contexts(items):
        ae.add_requested_context(sop_class, syntaxes)
    try:
        assoc = _associate(ae, dest)
    except (OSError, ValueError) as exc:  # TLS set-up: unreadable certificate or key
        raise PeerUnavailable(f"{dest.ae_title}: TLS set-up failed: {exc}") from exc
    if not assoc.is_established:
        raise PeerUnavailable(
            f"{dest.ae_title}@{dest.host}:{dest.port}: "
            + ("association rejected" if assoc.is_rejected else "association failed")
        )

    def answered(n: int, code: int) -> None:
        err = classify(code)
        if err is not None:
            raise err(f"{dest.ae_title} answered 0x{code:04X} ({code_to_category(code)})")
        statuses.append(code)
        if progress:
            progress(len(statuses))

    try:
        cstore.tune_for_sending(assoc)
        if before_send is not None:
            before_send()
        cstore.send_all(assoc, items, answered)
    except cstore.LostResponse as exc:
        raise cstore.LostResponse(f"{dest.ae_title}: {exc}", exc.acknowledged) from exc
    finally:
        if assoc.is_established:
            assoc.release()
