"""Shared by ``bench/throughput.py`` and ``bench/worker_memory.py``: a scaled-out AIRCON
(``tests/cluster.py``: ``aircon serve --role receiver`` + N ``aircon worker`` processes) on a
fresh database of a private PostgreSQL and its own private Redis, a
:class:`~gateway.demo.node.ReceivingNode` as the planning system, phantom studies sent by
concurrent dcmtk ``storescu`` processes, and the CPU time each process used (``/proc``)."""

from __future__ import annotations

import functools
import os
import re
import shutil
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.db.database import Store
from gateway.demo.launcher import free_port
from gateway.demo.node import ReceivingNode
from tests.cluster import Cluster
from tests.conftest import wait_for
from tests.faults.harness import NNUNET_MODEL, QUICK_MODEL, Study, clone_study, write_template
from tests.services import PostgresServer, RedisServer

MODELS = {"nnunet": NNUNET_MODEL, "quick": QUICK_MODEL}
_TICK = os.sysconf("SC_CLK_TCK")
_BUILT = re.compile(r": RTSTRUCT \S+ built")


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()  # fields from 3 (state) on


def _children() -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) is not None:
            out.setdefault(int(fields[1]), []).append(int(entry.name))
    return out


def tree_cpu_s(pid: int, children: dict[int, list[int]] | None = None) -> float:
    """CPU seconds (user + system) of ``pid``, its reaped children and its live descendants:
    a child's time moves into its parent's cutime/cstime when it is reaped, so the sum stays
    comparable across samples (PostgreSQL's backends come and go)."""
    children = _children() if children is None else children
    fields = _stat(pid)
    if fields is None:
        return 0.0
    own = sum(int(f) for f in fields[11:15]) / _TICK  # utime stime cutime cstime
    return own + sum(tree_cpu_s(child, children) for child in children.get(pid, []))


def machine_busy_s() -> float:
    """CPU seconds all cores spent busy since boot (``/proc/stat``, not idle or iowait)."""
    first = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    ticks = [int(t) for t in first]
    return (sum(ticks[:8]) - ticks[3] - ticks[4]) / _TICK


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def make_studies(root: Path, n: int) -> list[Study]:
    template = write_template(root / "template")
    return [clone_study(template, root / "studies" / f"study{i:03d}") for i in range(n)]


@dataclass
class Delivered:
    """What the planning system received: (arrival time, Study Instance UID) per RTSTRUCT."""

    arrivals: list[tuple[float, str]]

    def per_study(self) -> Counter[str]:
        return Counter(uid for _, uid in self.arrivals)


class ScaleRun:
    """Receiver + ``workers`` workers on a fresh database of ``pg`` and a fresh Redis, under
    ``root``; the planning system is a receiving node in this process. Start, send, wait,
    stop; the folders go with ``root``."""

    def __init__(
        self,
        root: Path,
        pg: PostgresServer,
        *,
        workers: int,
        model: str,
        threads: int,
        model_seconds: float = 1.0,
        quiet_s: float = 2.0,
    ):
        self.root = root
        self.model = model
        self.redis = RedisServer().start()
        self.arrivals: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        self.node = ReceivingNode(root / "planning", port=free_port())
        self.node.on_store = self._arrived
        self.node.start()
        # A lease long enough that a starved worker on 2 shared cores keeps its job.
        self.cluster = Cluster(
            root,
            pg.new_database(),
            self.redis.url,
            self.node.port,
            workers=workers,
            model=model,
            model_seconds=model_seconds,
            quiet_s=quiet_s,
            lease_s=30.0,
            threads=threads,
        )

    @functools.cached_property
    def store(self) -> Store:
        return self.cluster.store()

    @property
    def workers(self) -> list[Any]:
        return self.cluster.workers

    def _arrived(self, dataset: Any) -> None:
        if dataset.Modality == "RTSTRUCT":
            with self._lock:
                self.arrivals.append((time.time(), str(dataset.StudyInstanceUID)))

    def start(self, timeout: float = 300) -> ScaleRun:
        self.cluster.start()
        warm = f"model {self.model} warm"  # the worker loads its model after it is ready
        for worker in self.workers:
            wait_for(lambda w=worker: warm in w.log(), timeout, what=f"{worker.hostname}: {warm}")
        return self

    def send(self, studies: list[Study], senders: int) -> None:
        """``senders`` storescu processes at once, each sending its share one study at a time;
        raises when a send fails."""
        failures: list[str] = []

        def send(share: list[Study]) -> None:
            for study in share:
                done = self.cluster.receiver.storescu(study.folder)
                if done.returncode != 0:
                    failures.append(f"{study.folder.name}: {done.stderr[-300:]}")

        threads = [
            threading.Thread(target=send, args=(studies[i::senders],)) for i in range(senders)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if failures:
            raise RuntimeError("storescu failed: " + " | ".join(failures))

    def delivered(self) -> Delivered:
        with self._lock:
            return Delivered(list(self.arrivals))

    def wait_delivered(self, studies: list[Study], timeout: float) -> Delivered:
        want = {s.study_uid for s in studies}
        wait_for(
            lambda: want <= set(self.delivered().per_study()),
            timeout,
            interval=0.1,
            what=f"{len(want)} RTSTRUCTs at the planning system",
        )
        return self.delivered()

    def check(self, studies: list[Study]) -> list[str]:
        """Problems: a study without exactly one job, done, run once, and exactly one RTSTRUCT
        at the planning system; empty when everything is right."""
        want = {s.study_uid for s in studies}
        problems = []
        jobs = [j for j in self.store.list_jobs(limit=100_000) if j.study_uid in want]
        per_study = Counter(j.study_uid for j in jobs)
        if set(per_study) != want or set(per_study.values()) != {1}:
            problems.append(f"jobs per study: {sorted(Counter(per_study.values()).items())}")
        states = Counter(j.state for j in jobs)
        if set(states) != {"done"}:
            problems.append(f"job states: {dict(states)}")
        reruns = [j.id for j in jobs if j.attempts != 1]
        if reruns:
            problems.append(f"jobs run more than once: {reruns}")
        received = self.delivered().per_study()
        if set(received) != want or set(received.values()) != {1}:
            problems.append(f"RTSTRUCTs per study at the planning system: {dict(received)}")
        return problems

    def jobs(self, studies: list[Study]) -> list[Any]:
        want = {s.study_uid for s in studies}
        return [j for j in self.store.list_jobs(limit=100_000) if j.study_uid in want]

    def built(self, worker: Any) -> int:
        return len(_BUILT.findall(worker.log()))

    def stop(self) -> None:
        try:
            if "store" in self.__dict__:
                self.store.engine.dispose()
            self.cluster.stop()
        finally:
            self.node.stop()
            self.redis.stop()

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def postmaster_pid(pg: PostgresServer) -> int:
    return int((pg.root / "data" / "postmaster.pid").read_text().split()[0])
