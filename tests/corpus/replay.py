"""Sending the corpus's cases to a gateway as each case's manifest says (used by the corpus
test and by ``bench/hostile.py``): pynetdicom sends each file's dataset bytes as they are, raw
sockets carry the transport cases. Call inside :func:`raw_sending` so that pynetdicom neither
re-encodes datasets nor checks the UIDs it sends.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.filereader import read_file_meta_info
from pynetdicom import AE, _config
from pynetdicom.association import Association

from gateway.dicom.status import VERIFICATION_SOP_CLASS
from tests.corpus.generate import Case

IDLE_TIMEOUT_S = 5.0
CLOSE_MARGIN_S = 30.0  # a loaded 2-core machine may close an idle connection this much late
ANSWER_TIMEOUT_S = 30.0  # for an association to be accepted and for each response
GATEWAY_AE = "AIRCON"


@contextmanager
def raw_sending() -> Iterator[None]:
    """Send each file's dataset bytes as they are (pynetdicom would otherwise decode and
    re-encode them, which truncated or garbage datasets do not survive), and let invalid UIDs
    (over 64 characters too) go into the requests unchanged."""
    chunked, validator = _config.STORE_SEND_CHUNKED_DATASET, _config.VALIDATORS["UI"]
    _config.STORE_SEND_CHUNKED_DATASET = True
    _config.VALIDATORS["UI"] = lambda value: (True, "")
    try:
        yield
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = chunked
        _config.VALIDATORS["UI"] = validator


@dataclass
class Observed:
    """What the gateway did with one case."""

    association: str | None = None  # "accepted", "rejected" or what happened instead
    context: str | None = None  # "accepted" when every file's context was accepted
    statuses: list[str] = field(default_factory=list)  # one per C-STORE sent
    echo: str | None = None  # C-ECHO status on the case's association
    open_s: float | None = None  # how long the gateway kept the connection open
    job: dict[str, Any] | None = None
    jobs: int = 0
    rtstructs: int = 0
    sending_s: float = 0.0

    def summary(self) -> str:
        parts = [f"association {self.association}"] if self.association else []
        if self.context:
            parts.append(f"context {self.context}")
        if self.statuses:
            counts = {s: self.statuses.count(s) for s in sorted(set(self.statuses))}
            parts.append("C-STORE " + ", ".join(f"{n}x {s}" for s, n in counts.items()))
        if self.echo:
            parts.append(f"C-ECHO {self.echo}")
        if self.open_s is not None:
            parts.append(f"closed by the gateway after {self.open_s:.1f} s")
        if self.job:
            parts.append(f"job {self.job['state']} {(self.job['reason'] or '')[:160]!r}")
        if self.rtstructs:
            parts.append(f"{self.rtstructs} RTSTRUCT")
        return "; ".join(parts) + f" ({self.sending_s:.1f} s)"


def _status(rsp: Any) -> str:
    return f"0x{rsp.Status:04X}" if rsp is not None and "Status" in rsp else "no response"


def _context(path: Path) -> tuple[str, str]:
    meta = read_file_meta_info(path)
    return str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID)


def _associate(port: int, calling_ae: str, contexts: list[tuple[str, str]]) -> Association:
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ANSWER_TIMEOUT_S
    ae.network_timeout = IDLE_TIMEOUT_S + CLOSE_MARGIN_S + 60
    for sop_class, transfer_syntax in contexts:
        ae.add_requested_context(sop_class, transfer_syntax)
    ae.add_requested_context(VERIFICATION_SOP_CLASS)
    return ae.associate("127.0.0.1", port, ae_title=GATEWAY_AE)


def _refused(assoc: Association) -> str:
    return "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "failed"


def send_over_one_association(port: int, case: Case, corpus: Path) -> Observed:
    paths = [corpus / f for f in case.files]
    contexts = sorted({_context(p) for p in paths})
    assoc = _associate(port, case.calling_ae, contexts)
    if not assoc.is_established:
        return Observed(association=_refused(assoc))
    accepted = {
        (str(c.abstract_syntax), str(c.transfer_syntax[0])) for c in assoc.accepted_contexts
    }
    obs = Observed(
        association="accepted",
        context="accepted" if set(contexts) <= accepted else "rejected",
    )
    for path in paths:
        if _context(path) not in accepted:
            continue
        if not assoc.is_established:
            obs.statuses.append("association ended")
            continue
        obs.statuses.append(_status(assoc.send_c_store(path)))
    if not assoc.is_established:
        obs.echo = "not sent: the association ended"
        return obs
    obs.echo = _status(assoc.send_c_echo())
    if assoc.is_established:
        assoc.release()
    return obs


def send_concurrently(port: int, case: Case, corpus: Path) -> Observed:
    paths = [corpus / f for f in case.files]
    barrier = threading.Barrier(len(paths))

    def one(path: Path) -> tuple[str, str | None, str | None]:
        barrier.wait(timeout=ANSWER_TIMEOUT_S)
        assoc = _associate(port, case.calling_ae, [_context(path)])
        if not assoc.is_established:
            return _refused(assoc), None, None
        echo = _status(assoc.send_c_echo())
        stored = _status(assoc.send_c_store(path))
        assoc.release()
        return "accepted", echo, stored

    with ThreadPoolExecutor(len(paths)) as pool:
        results = list(pool.map(one, paths))
    associations = {a for a, _, _ in results}
    echoes = {e for _, e, _ in results}
    return Observed(
        association=associations.pop() if len(associations) == 1 else str(sorted(associations)),
        echo=echoes.pop() if len(echoes) == 1 else str(sorted(map(str, echoes))),
        statuses=[s or "not sent" for _, _, s in results],
    )


def hold_open(port: int, case: Case, corpus: Path) -> Observed:
    """Open the case's connection, send its bytes (if any), and time how long the gateway
    keeps it open (None: still open after the idle timeout and the margin)."""
    limit = IDLE_TIMEOUT_S + CLOSE_MARGIN_S
    if case.send == "association-idle":
        assoc = _associate(port, case.calling_ae, [])
        if not assoc.is_established:
            return Observed(association=_refused(assoc))
        start = time.monotonic()
        while assoc.is_established and time.monotonic() - start < limit:
            time.sleep(0.05)
        open_s = time.monotonic() - start
        if assoc.is_established:
            assoc.abort()
            return Observed(association="accepted")
        return Observed(association="accepted", open_s=open_s)
    with socket.create_connection(("127.0.0.1", port), timeout=limit) as sock:
        start = time.monotonic()
        if case.send == "tcp-bytes":
            sock.sendall((corpus / case.files[0]).read_bytes())
        try:
            while (left := start + limit - time.monotonic()) > 0:
                sock.settimeout(left)
                if not sock.recv(65536):  # data first: e.g. an A-ABORT before the close
                    return Observed(open_s=time.monotonic() - start)
        except TimeoutError:
            pass
        except ConnectionError:
            return Observed(open_s=time.monotonic() - start)
        return Observed()


def timed(
    send: Callable[[int, Case, Path], Observed], port: int, case: Case, corpus: Path
) -> Observed:
    start = time.monotonic()
    obs = send(port, case, corpus)
    obs.sending_s = time.monotonic() - start
    return obs


SENDERS: dict[str, Callable[[int, Case, Path], Observed]] = {
    "c-store": send_over_one_association,
    "concurrent": send_concurrently,
    "tcp-idle": hold_open,
    "association-idle": hold_open,
    "tcp-bytes": hold_open,
}
