"""SCU side: C-ECHO and C-STORE to peers, responses classified as retriable or permanent."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.status import code_to_category

from gateway.config import DestinationConfig
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
) -> list[int]:
    """C-STORE ``files`` over one association; return the status of each.

    Raises PeerUnavailable when no association could be made or it broke, PeerBusy or
    DeliveryRejected on the first failure status (as classified by :func:`classify`).
    """
    # Headers only to negotiate contexts; each file is read again when it is sent.
    headers = [f if isinstance(f, Dataset) else dcmread(f, stop_before_pixels=True) for f in files]
    ae = _ae(calling_ae, timeout)
    contexts = sorted(
        {(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for ds in headers}
    )
    if len(contexts) > 128:
        raise DeliveryRejected("more than 128 presentation contexts in one send")
    for sop_class, ts in contexts:
        ae.add_requested_context(sop_class, [ts])
    try:
        assoc = _associate(ae, dest)
    except (OSError, ValueError) as exc:  # TLS set-up: unreadable certificate or key
        raise PeerUnavailable(f"{dest.ae_title}: TLS set-up failed: {exc}") from exc
    if not assoc.is_established:
        raise PeerUnavailable(
            f"{dest.ae_title}@{dest.host}:{dest.port}: "
            + ("association rejected" if assoc.is_rejected else "association failed")
        )
    statuses = []
    try:
        if before_send is not None:
            before_send()
        for n, item in enumerate(files, 1):
            rsp = assoc.send_c_store(item)  # a path is sent as encoded, without decoding
            code = getattr(rsp, "Status", None)
            if code is None:
                raise PeerUnavailable(f"{dest.ae_title}: no C-STORE response (connection lost?)")
            err = classify(code)
            if err is not None:
                raise err(f"{dest.ae_title} answered 0x{code:04X} ({code_to_category(code)})")
            statuses.append(code)
            if progress:
                progress(n)
    finally:
        if assoc.is_established:
            assoc.release()
    return statuses
