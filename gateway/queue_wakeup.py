"""Huey's SQLite storage with an in-process wake-up: a task queued in this process reaches an
idle worker at once, not at the worker's next poll.

Huey's consumer polls a non-blocking storage, backing off up to ``max_delay`` between polls,
so a job ready for a worker, and then its RTSTRUCT's delivery, each waited up to that delay.
A storage that says it blocks is asked again at once instead: here ``dequeue`` waits on a
condition that ``enqueue`` in this process signals, and at most ``wait_s`` for a task queued
by another process (e.g. ``aircon resend``), which only the database shows. Redis needs none
of this: ``RedisHuey`` blocks on BRPOP by default.
"""

from __future__ import annotations

import threading
from typing import Any

from huey.storage import SqliteStorage

DEFAULT_WAIT_S = 0.25


class WakingSqliteStorage(SqliteStorage):
    blocking = True

    def __init__(self, *args: Any, wait_s: float = DEFAULT_WAIT_S, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.wait_s = wait_s
        self._queued = threading.Condition()
        self._generation = 0  # counts in-process enqueues, so none slips by unnoticed

    def enqueue(self, data: bytes, priority: float | None = None) -> None:
        super().enqueue(data, priority)
        with self._queued:
            self._generation += 1
            self._queued.notify_all()

    def dequeue(self) -> bytes | None:
        with self._queued:
            seen = self._generation
        data = super().dequeue()
        if data is not None:
            return data
        with self._queued:
            self._queued.wait_for(lambda: self._generation != seen, timeout=self.wait_s)
        return super().dequeue()
