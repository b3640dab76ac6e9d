"""Liveness and readiness of a gateway process, for ``/healthz`` and ``/readyz``.

Readiness is four checks, each named in the answer with ``ok`` and a reason in words:

* ``database``: a real write (the ``components`` row ``health``) commits;
* ``scp``: the Storage SCP of this process is listening (asked of :class:`Live`);
* ``models``: every model a rule uses was loaded and warmed by some gateway process
  (its ``components`` row ``model:<name>`` is ``ok``);
* ``disk``: free space under ``paths.spool`` is above ``storage.min_free_mb`` (below it,
  reception refuses instances with 0xA700).
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any, Protocol

from sqlalchemy.exc import SQLAlchemyError

from gateway.config import GatewayConfig
from gateway.db.database import Store
from gateway.receive.spool import Spool

MIB = 1024**2


class Live(Protocol):
    """What only the running process knows (the console passes it in)."""

    def scp_listening(self) -> bool:
        """True while this process's Storage SCP accepts associations."""
        ...


def liveness() -> dict[str, Any]:
    """The process answers: nothing else is checked (a restart would not fix anything else)."""
    return {"alive": True}


def spool_free_bytes(cfg: GatewayConfig) -> float:
    """Free bytes on the file system that holds (or will hold) the spool."""
    return Spool(cfg.paths.spool).free_mb() * MIB


def readiness(cfg: GatewayConfig, store: Store, live: Live) -> tuple[bool, dict[str, Any]]:
    """(ready, body): ``body["checks"]`` maps each check to ``{"ok": bool, "reason": str}``;
    ``body["not_ready"]`` lists the checks that failed."""
    checks = {
        "database": _database(store),
        "scp": _scp(live),
        "models": _models(cfg, store),
        "disk": _disk(cfg),
    }
    failed = [name for name, c in checks.items() if not c["ok"]]
    return not failed, {"ready": not failed, "not_ready": failed, "checks": checks}


def _check(ok: bool, reason: str) -> dict[str, Any]:
    return {"ok": ok, "reason": reason}


def _database(store: Store) -> dict[str, Any]:
    owner = f"{socket.gethostname()}:{os.getpid()}"
    try:
        store.set_component("health", "ok", time.time(), "readiness probe write", owner)
    except SQLAlchemyError as exc:
        # The exception's class and first line only: its SQL parameters are not shown.
        first = str(getattr(exc, "orig", None) or exc).splitlines()[0][:200]
        return _check(False, f"database not writable: {type(exc).__name__}: {first}")
    return _check(True, "database writable (a write committed)")


def _scp(live: Live) -> dict[str, Any]:
    try:
        listening = live.scp_listening()
    except Exception as exc:  # noqa: BLE001 - a broken probe is a failed check, not a 500
        return _check(False, f"the Storage SCP could not be asked: {type(exc).__name__}")
    if listening:
        return _check(True, "the Storage SCP is listening")
    return _check(False, "the Storage SCP is not listening")


def _models(cfg: GatewayConfig, store: Store) -> dict[str, Any]:
    used = sorted({m for rule in cfg.rules for m in rule.models})
    if not used:
        return _check(True, "no rule uses a model")
    try:
        components = store.components()
    except SQLAlchemyError as exc:
        return _check(False, f"model states could not be read: {type(exc).__name__}")
    problems = []
    for name in used:
        row = components.get(f"model:{name}")
        if row is None:
            problems.append(f"{name}: not loaded by any gateway process yet")
        elif row.state != "ok":
            detail = f" ({row.detail})" if row.detail else ""
            problems.append(f"{name}: {row.state}{detail}")
    if problems:
        return _check(False, "models not warm: " + "; ".join(problems))
    return _check(True, f"{len(used)} model(s) warm: {', '.join(used)}")


def _disk(cfg: GatewayConfig) -> dict[str, Any]:
    guard_mb = cfg.storage.min_free_mb
    try:
        free_mb = spool_free_bytes(cfg) / MIB
    except OSError as exc:
        return _check(False, f"free space under the spool could not be read: {exc.strerror}")
    words = f"{free_mb:.0f} MB free under the spool, guard storage.min_free_mb {guard_mb:g} MB"
    return _check(free_mb > guard_mb, words)
