"""The task queue binding (Huey): embedded SQLite storage by default, Redis for scale-out.

Huey decides *when* a pipeline step runs (now, or after a delay); the database decides *what* is
left to do. Tasks carry only ids and UIDs. In the embedded mode the queue file is flushed at
start-up and :meth:`Pipeline.recover` re-dispatches all unfinished work from the database, so a
step that was being executed when the process died runs again, and nothing is dispatched twice.
"""

from __future__ import annotations

import logging
from typing import Any

from huey import RedisHuey, SqliteHuey
from huey.api import Huey

from gateway.config import GatewayConfig
from gateway.queue_wakeup import WakingSqliteStorage

log = logging.getLogger(__name__)


def make_huey(cfg: GatewayConfig) -> Huey:
    if cfg.queue.backend == "redis":
        return RedisHuey("aircon", url=cfg.queue.url, results=False, utc=True)
    cfg.queue.path.parent.mkdir(parents=True, exist_ok=True)
    return SqliteHuey(
        "aircon",
        filename=str(cfg.queue.path),
        results=False,
        utc=True,
        storage_class=WakingSqliteStorage,  # workers wake on an in-process enqueue, no polling
    )


class HueyDispatcher:
    """Implements :class:`gateway.pipeline.Dispatcher` on Huey tasks."""

    def __init__(self, huey: Huey):
        self.huey = huey
        self._pipeline: Any = None
        self._run = huey.task(name="run_job")(self._run_job)
        self._deliver = huey.task(name="deliver")(self._run_deliver)
        self._compare = huey.task(name="compare")(self._run_compare)

    def bind(self, pipeline: Any) -> None:
        """Attach the pipeline whose steps the workers execute (consumer side only)."""
        self._pipeline = pipeline

    # -- enqueue (any process) -------------------------------------------------------------------

    def run_job(self, job_id: int) -> None:
        self._enqueue(self._run, job_id, 0.0)

    def deliver(self, delivery_id: int, delay: float = 0.0) -> None:
        self._enqueue(self._deliver, delivery_id, delay)

    def compare(self, structure_set_uid: str) -> None:
        self._enqueue(self._compare, structure_set_uid, 0.0)

    @staticmethod
    def _enqueue(task: Any, arg: Any, delay: float) -> None:
        if delay > 0:
            task.schedule(args=(arg,), delay=delay)
        else:
            task(arg)

    # -- execute (consumer workers) --------------------------------------------------------------

    def _run_job(self, job_id: int) -> None:
        self._pipeline.run_job(job_id)

    def _run_deliver(self, delivery_id: int) -> None:
        self._pipeline.deliver(delivery_id)

    def _run_compare(self, structure_set_uid: str) -> None:
        self._pipeline.compare(structure_set_uid)
