"""The task queue binding (Huey): embedded SQLite storage by default, Redis for scale-out.

Huey decides *when* a pipeline step runs (now, or after a delay); the database decides *what* is
left to do. Tasks carry only ids and UIDs. There are two queues: ``models`` (a job: volumes ->
models -> RTSTRUCT; consumed by ``aircon worker``, one per GPU) and ``work`` (deliveries and QA
comparisons; consumed by the receiver), so that a delivery never waits behind inference and a
GPU worker takes only model work. ``aircon serve`` (all in one) consumes both.

Huey hands a task to one consumer and forgets it (at most once): a worker killed mid-task loses
its task. The database's leases cover that: each process's scheduler gives back the jobs whose
lease expired and hands what is queued in the database but in no queue to the queue again. In
the embedded mode the queue file is flushed at start-up and :meth:`Pipeline.recover`
re-dispatches all unfinished work from the database.
"""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

from huey import RedisHuey, SqliteHuey
from huey.api import Huey

from gateway.config import GatewayConfig
from gateway.queue_wakeup import WakingSqliteStorage

log = logging.getLogger(__name__)

MODELS, WORK = "aircon-models", "aircon-work"


class Queues(NamedTuple):
    models: Huey
    work: Huey


def make_queues(cfg: GatewayConfig) -> Queues:
    """The two queues on ``queue.backend`` (one Redis database or one SQLite file)."""
    if cfg.queue.backend == "redis":
        # Huey blocks on the Redis list (BRPOP) instead of polling: a task starts at once.
        url = cfg.queue.url
        return Queues(*(RedisHuey(n, url=url, results=False, utc=True) for n in (MODELS, WORK)))
    cfg.queue.path.parent.mkdir(parents=True, exist_ok=True)
    return Queues(
        *(
            # workers wake on an in-process enqueue, no polling
            SqliteHuey(
                name,
                filename=str(cfg.queue.path),
                results=False,
                utc=True,
                storage_class=WakingSqliteStorage,
            )
            for name in (MODELS, WORK)
        )
    )


class HueyDispatcher:
    """Implements :class:`gateway.pipeline.Dispatcher` on Huey tasks."""

    def __init__(self, queues: Queues):
        self.queues = queues
        self._pipeline: Any = None
        self._run = queues.models.task(name="run_job")(self._run_job)
        self._deliver = queues.work.task(name="deliver")(self._run_deliver)
        self._compare = queues.work.task(name="compare")(self._run_compare)

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
        # The step is already recorded as to-do in the database: when the queue server cannot
        # take it (Redis restarting), a scheduler hands it to the queue again later.
        try:
            if delay > 0:
                task.schedule(args=(arg,), delay=delay)
            else:
                task(arg)
        except Exception as exc:  # noqa: BLE001 - any queue failure; the database keeps the step
            log.warning(
                "queue unavailable for %s(%s): %s; it is handed again from the database",
                task.name,
                arg,
                exc,
            )

    # -- execute (consumer workers) --------------------------------------------------------------

    def _run_job(self, job_id: int) -> None:
        self._pipeline.run_job(job_id)

    def _run_deliver(self, delivery_id: int) -> None:
        self._pipeline.deliver(delivery_id)

    def _run_compare(self, structure_set_uid: str) -> None:
        self._pipeline.compare(structure_set_uid)
