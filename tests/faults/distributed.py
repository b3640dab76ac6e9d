"""Crash trials of the scaled-out gateway: a receiver and two workers on PostgreSQL and Redis.

A trial (:meth:`DistributedHarness.run`) starts a fresh cluster (``tests.cluster.Cluster``: a new
database, an emptied Redis, a receiving node as the planning system), sends one or more phantom
studies with dcmtk ``storescu -v`` and then does one of :data:`DISTRIBUTED_FAULTS`:

- ``worker.inference``: SIGKILL the worker whose job is between its ``volume`` and ``segment``
  stages (its lease is left behind; the workers look like other hosts, so only the lease's expiry
  gives the job back);
- ``worker.delay``: SIGKILL a random worker some seconds after the send started;
- ``receiver.after_acks``: SIGKILL the receiver right after the n-th acknowledged instance;
- ``receiver.delay``: SIGKILL the receiver some seconds after the send started;
- ``receiver.<crash point>``: the receiver kills itself at one of its crash points
  (``receive.before_ack``, ``receive.after_ack``, ``job.queued``, ``deliver.before_send``,
  ``deliver.after_accept``);
- ``worker.job.segment``: a worker kills itself while its model runs;
- ``redis.restart``: Redis is killed and started again (every queued task is lost).

Then every dead process is started again, the broken sends are resent, and the same checks as
:class:`tests.faults.harness.CrashHarness` count lost instances, duplicated RTSTRUCTs and
undelivered studies.
"""

from __future__ import annotations

import random
import shutil
import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from gateway.db.database import Store
from gateway.db.records import JobState
from gateway.demo.launcher import free_port
from gateway.demo.node import ReceivingNode
from tests.cluster import Cluster, WorkerProcess
from tests.faults.harness import (
    INSTANCES,
    QUICK_MODEL,
    CrashHarness,
    Sender,
    Study,
    TrialResult,
    clone_study,
)
from tests.services import PostgresServer, RedisServer

RECEIVER_POINTS = (
    "receive.before_ack",
    "receive.after_ack",
    "job.queued",
    "deliver.before_send",
    "deliver.after_accept",
)
DISTRIBUTED_FAULTS = (
    "worker.inference",
    "worker.delay",
    "receiver.after_acks",
    "receiver.delay",
    *(f"receiver.{p}" for p in RECEIVER_POINTS),
    "worker.job.segment",
    "redis.restart",
)


@dataclass(frozen=True)
class ClusterFault:
    where: str
    n: int = 1
    delay_s: float = 0.0

    @property
    def crash_point(self) -> str | None:
        """The product's crash point this fault arms (in the receiver or the workers)."""
        if self.where.startswith("receiver.") and self.where[9:] in RECEIVER_POINTS:
            return self.where[9:]
        if self.where == "worker.job.segment":
            return "job.segment"
        return None

    def __str__(self) -> str:
        if self.where.endswith(("delay", "restart")):
            return f"{self.where}({self.delay_s:.1f} s)"
        return f"{self.where}#{self.n}"


def random_cluster_fault(rng: random.Random, studies: int) -> ClusterFault:
    where = rng.choice(DISTRIBUTED_FAULTS)
    if where in (
        "receiver.after_acks",
        "receiver.receive.before_ack",
        "receiver.receive.after_ack",
    ):
        return ClusterFault(where, rng.randint(1, INSTANCES * studies))
    if where.endswith(("delay", "restart")):
        return ClusterFault(where, delay_s=rng.uniform(0.2, 6.0))
    if where == "worker.job.segment":
        # Each worker counts its own jobs, and which worker takes how many is not known: its
        # first one is certain to come.
        return ClusterFault(where, 1)
    return ClusterFault(where, rng.randint(1, studies))


class DistributedHarness(CrashHarness):
    """Trials on one PostgreSQL server (a database per trial) and one Redis server (restarted
    empty per trial)."""

    def __init__(self, root: Path, template: Path, postgres: PostgresServer, redis: RedisServer):
        super().__init__(root, template, settle_timeout_s=240.0)
        self.postgres = postgres
        self.redis = redis

    def run_cluster(
        self, name: str, fault: ClusterFault, studies: int = 1, keep: bool = True
    ) -> TrialResult:
        t0 = time.monotonic()
        work = self.root / name
        if work.exists():
            shutil.rmtree(work)
        work.mkdir(parents=True)
        result = TrialResult(name, fault, studies, work=work)  # type: ignore[arg-type]
        batch = [clone_study(self.template, work / "send" / f"study{i}") for i in range(studies)]
        self.redis.restart()  # nothing of an earlier trial in the queue
        node = ReceivingNode(work / "planning", ae_title="ORTHANC", port=free_port())
        node.start()
        cluster = Cluster(
            work,
            self.postgres.new_database(),
            self.redis.url,
            node.port,
            model_seconds=2.0,
            lease_s=6.0,
            model=QUICK_MODEL,
        )
        gw = cluster.receiver
        acked: set[str] = set()
        try:
            _arm(cluster, fault)
            cluster.start()
            senders, result.reached = self._strike(cluster, node, batch, fault)
            result.acked = sum(len(x.acked) for x in senders)
            acked |= {uid for x in senders for uid in x.acked}
            complete = {x.study.study_uid for x in senders if x.complete}
            node.on_store = None
            _arm(cluster, None)
            if not gw.running:
                gw.start()
            for worker in cluster.workers:
                if worker.proc is None or worker.proc.poll() is not None:
                    worker.start()
            for study in batch:
                if study.study_uid not in complete:
                    result.resent += 1
                    acked |= self._resend(study, gw.port, result)
            spool = gw.cfg.paths.spool
            self._settle(gw, gw.cfg.assembly.series_quiet_s, batch, result)
            self._check_kept(gw, spool, batch, acked, result, before_restart=False)
            self._check_delivered(gw, node, batch, result)
        except Exception as exc:  # noqa: BLE001 - a harness failure is a failed trial, reported
            result.undelivered["*"] = f"harness error: {type(exc).__name__}: {exc}"
        finally:
            cluster.stop()
            node.stop()
        result.seconds = time.monotonic() - t0
        if result.ok and not keep:
            shutil.rmtree(work, ignore_errors=True)
        return result

    def _strike(
        self,
        cluster: Cluster,
        node: ReceivingNode,
        batch: Sequence[Study],
        fault: ClusterFault,
    ) -> tuple[list[Sender], bool]:
        """Send the batch and make ``fault`` happen; (senders, whether it happened)."""
        receiver = cluster.receiver
        assert receiver.proc is not None
        happened = threading.Event()
        acks = [0]
        lock = threading.Lock()

        def kill_receiver() -> None:
            if not happened.is_set() and receiver.proc is not None:
                happened.set()
                receiver.proc.send_signal(signal.SIGKILL)

        def on_ack(_uid: str) -> None:
            with lock:
                acks[0] += 1
                if fault.where == "receiver.after_acks" and acks[0] == fault.n:
                    kill_receiver()

        senders = []
        for i, study in enumerate(batch):
            if i:
                time.sleep(0.3)
            senders.append(Sender(study, receiver.port, on_ack).start())
        timer: threading.Timer | None = None
        if fault.where.endswith(("delay", "restart")):
            action = {
                "receiver.delay": kill_receiver,
                "worker.delay": lambda: (
                    happened.set(),
                    random.choice(cluster.workers).kill(),
                ),
                "redis.restart": lambda: (happened.set(), self.redis.restart()),
            }[fault.where]
            timer = threading.Timer(fault.delay_s, action)
            timer.start()
        deadline = time.monotonic() + self.crash_timeout_s
        store = cluster.store()
        while time.monotonic() < deadline and not happened.is_set():
            if fault.crash_point and _crash_logged(cluster, fault.crash_point):
                happened.set()
                break
            if fault.where == "worker.inference":
                for job in store.list_jobs():
                    inferring = "volume" in job.stages and "segment" not in job.stages
                    if job.state == JobState.RUNNING.value and inferring:
                        holder = _holder(cluster, job.lease_owner or "")
                        if holder is not None:
                            holder.kill()
                            happened.set()
                            break
            if not receiver.running and fault.where.startswith("receiver."):
                break  # it died at its crash point (checked once more below)
            if timer is None and _all_settled(store, batch):
                break
            time.sleep(0.05)
        if timer is not None:
            timer.join()
        if fault.crash_point:
            time.sleep(0.5)
            if _crash_logged(cluster, fault.crash_point):
                happened.set()
        for x in senders:
            x.wait(60)
        return senders, happened.is_set()


def _holder(cluster: Cluster, owner: str) -> WorkerProcess | None:
    for worker in cluster.workers:
        if worker.proc is not None and f":{worker.pid}:" in owner:
            return worker
    return None


def _crash_logged(cluster: Cluster, point: str) -> bool:
    mark = f"crash point {point} reached: SIGKILL"
    return mark in cluster.receiver.log() or any(mark in w.log() for w in cluster.workers)


def _all_settled(store: Store, batch: Sequence[Study]) -> bool:
    jobs = store.list_jobs(limit=1000)
    done = {j.study_uid for j in jobs if j.state == JobState.DONE.value}
    return all(s.study_uid in done for s in batch)


def _arm(cluster: Cluster, fault: ClusterFault | None) -> None:
    """Arm the fault's crash point in the process that reaches it (receiver or workers)."""
    point = fault.crash_point if fault is not None else None
    paths = [cluster.receiver.config_path] + [w.config for w in cluster.workers]
    for i, path in enumerate(paths):
        raw = yaml.safe_load(path.read_text())
        raw.pop("faults", None)
        if point is not None and ((point == "job.segment") == (i > 0)):
            raw["faults"] = {"crash_at": {point: fault.n}}  # type: ignore[union-attr]
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
