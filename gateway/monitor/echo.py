"""The destinations' echo monitor: a C-ECHO of every destination every
``monitor.echo_interval_s``, each result stored (:meth:`Store.record_echo`: up, round-trip
time, last success, down since; a change between up and down is audited), and the overview of
the destinations the console and ``aircon destinations`` show.

Runs in the receiving process only (``Gateway.serve`` with ``listen``); ``check`` is also the
console's "echo now". A network failure is a *down* result with the reason, never an exception.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from gateway.config import DestinationConfig, GatewayConfig
from gateway.db.database import Store
from gateway.db.tables import DestinationStatusRow
from gateway.dicom import scu

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EchoStatus:
    """One destination as the operator sees it. Times are epoch seconds; ``up`` is None before
    the first echo; ``waiting`` counts its deliveries not yet over (pending or being sent)."""

    name: str
    ae_title: str
    host: str
    port: int
    up: bool | None
    rtt_ms: float | None
    checked_at: float | None
    last_success_at: float | None
    down_since: float | None
    last_error: str
    paused: bool
    paused_by: str
    waiting: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _status(
    name: str, dest: DestinationConfig, row: DestinationStatusRow | None, waiting: int
) -> EchoStatus:
    return EchoStatus(
        name=name,
        ae_title=dest.ae_title,
        host=dest.host,
        port=dest.port,
        up=None if row is None or row.up is None else bool(row.up),
        rtt_ms=None if row is None else row.rtt_ms,
        checked_at=None if row is None else row.checked_at,
        last_success_at=None if row is None else row.last_success_at,
        down_since=None if row is None else row.down_since,
        last_error="" if row is None else row.last_error,
        paused=False if row is None else bool(row.paused),
        paused_by="" if row is None else row.paused_by,
        waiting=waiting,
    )


def destinations_overview(cfg: GatewayConfig, store: Store) -> list[EchoStatus]:
    """Every configured destination with its last echo, pause and waiting deliveries, by name."""
    rows = store.destination_status()
    waiting = store.waiting_deliveries()
    return [
        _status(name, dest, rows.get(name), waiting.get(name, 0))
        for name, dest in sorted(cfg.destinations.items())
    ]


class EchoMonitor:
    def __init__(
        self,
        cfg: GatewayConfig,
        store: Store,
        calling_ae: str,
        *,
        clock: Callable[[], float] = time.time,
    ):
        self.cfg = cfg
        self.store = store
        self.calling_ae = calling_ae
        self.clock = clock

    def check(self, name: str) -> EchoStatus:
        """C-ECHO one destination now and store the result; its status after it. Raises
        KeyError for a name that is not a configured destination."""
        dest = self.cfg.destinations[name]
        timeout = self.cfg.monitor.echo_timeout_s
        t0 = time.monotonic()
        try:
            res = scu.echo(dest, self.calling_ae, timeout=timeout)
            up, detail = res.ok, res.detail
        except Exception as exc:  # a library failure is the peer's state too, never ours
            log.debug("echo %s: unexpected error", name, exc_info=True)
            up, detail = False, f"unexpected {type(exc).__name__}"
        rtt_ms = (time.monotonic() - t0) * 1000.0
        error = "" if up else f"{dest.ae_title}@{dest.host}:{dest.port}: {detail}"
        changed = self.store.record_echo(name, up, self.clock(), rtt_ms if up else None, error)
        if changed and up:
            log.info("destination %s is up again (C-ECHO %.0f ms)", name, rtt_ms)
        elif changed:
            log.warning("destination %s is down: %s", name, error)
        row = self.store.destination_status().get(name)
        return _status(name, dest, row, self.store.waiting_deliveries().get(name, 0))

    def check_all(self) -> list[EchoStatus]:
        """Echo every destination in turn (a destination down costs up to ``echo_timeout_s``)."""
        out = []
        for name in sorted(self.cfg.destinations):
            try:
                out.append(self.check(name))
            except Exception:  # e.g. the database briefly locked: the others are still checked
                log.exception("echo of destination %s could not be recorded", name)
        return out

    def run(self, stop: threading.Event) -> None:
        """Check every destination now and then every ``echo_interval_s`` until ``stop``."""
        interval = self.cfg.monitor.echo_interval_s
        while not stop.is_set():
            started = time.monotonic()
            try:
                self.check_all()
            except Exception:  # the monitor must outlive any one failure
                log.exception("destination echo pass failed; trying again")
            if stop.wait(max(0.0, started + interval - time.monotonic())):
                return
