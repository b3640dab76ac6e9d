"""Crash points for the fault harness: the process kills itself (SIGKILL) at a named point.

Configured by ``faults.crash_at`` ({point: n}: die on the n-th time the point is reached), used
only by ``tests/faults`` and ``bench/faults.py`` to show that nothing acknowledged is lost and
nothing is delivered twice whatever instant the process dies. Empty in production: ``hit`` is a
dictionary lookup.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Mapping

log = logging.getLogger(__name__)


class CrashPoints:
    def __init__(self, crash_at: Mapping[str, int] | None = None):
        self._left = dict(crash_at or {})
        self._lock = threading.Lock()

    @property
    def armed(self) -> bool:
        return bool(self._left)

    def hit(self, point: str) -> None:
        if point not in self._left:
            return
        with self._lock:
            self._left[point] -= 1
            if self._left[point] > 0:
                return
        log.critical("crash point %s reached: SIGKILL", point)
        for handler in logging.getLogger().handlers:
            try:
                handler.flush()
            except Exception:  # noqa: BLE001 - dying anyway
                pass
        os.kill(os.getpid(), signal.SIGKILL)
