"""Two gateway processes on one database: `aircon serve` (listens and works) and `aircon worker`
(works only). The database, not a process lock, guards every claim: each study gets one job, no
job runs twice, and a job whose process is killed mid-inference is finished by the other once its
lease expires."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from gateway.db.records import JobState
from gateway.demo.launcher import free_port, write_config
from gateway.demo.node import ReceivingNode
from tests.conftest import GatewayProcess, wait_for
from tests.faults.harness import (
    QUICK_MODEL,
    clone_study,
    gateway_overrides,
    write_models,
    write_template,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LEASE_S = 4.0


class Worker:
    """`aircon worker` on the receiving gateway's database, with its own queue."""

    def __init__(self, config: Path):
        self.config = config
        self.log_path = config.parent / "worker.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Worker:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gateway", "-c", str(self.config), "worker"],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.config.parent,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        wait_for(
            lambda: "ready (not listening)" in self.log_path.read_text(errors="replace"),
            120,
            what="the worker to start",
        )
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _pair(tmp_path: Path, node_port: int, seconds: float) -> tuple[GatewayProcess, Worker]:
    models = write_models(tmp_path / "models")
    overrides = gateway_overrides(models, QUICK_MODEL)
    overrides["queue"] = {"workers": 1, "lease_s": LEASE_S, "poll_s": 0.2}
    # The model pauses `seconds` per study: long enough for both processes to hold jobs.
    (models / QUICK_MODEL / "model.yaml").write_text(
        (models / QUICK_MODEL / "model.yaml")
        .read_text()
        .replace("seconds: 1.5", f"seconds: {seconds}")
    )
    serve_cfg = write_config(
        tmp_path / "serve", free_port(), destination_port=node_port, overrides=overrides
    )
    db_url = f"sqlite:///{tmp_path / 'serve' / 'aircon.db'}"
    worker_cfg = write_config(
        tmp_path / "worker",
        free_port(),
        destination_port=node_port,
        overrides={**overrides, "database": {"url": db_url}},
    )
    return GatewayProcess(serve_cfg), Worker(worker_cfg)


def test_two_processes_share_twenty_studies_and_run_each_job_once(tmp_path: Path) -> None:
    node = ReceivingNode(tmp_path / "planning", ae_title="ORTHANC", port=free_port())
    node.start()
    serve, worker = _pair(tmp_path, node.port, seconds=1.0)
    try:
        serve.start()
        worker.start()
        template = write_template(tmp_path / "template")
        studies = [clone_study(template, tmp_path / f"study{i}") for i in range(20)]
        for study in studies:
            assert serve.storescu(study.folder).returncode == 0
        store = serve.store()

        def finished() -> bool:
            jobs = store.list_jobs(limit=100)
            return len(jobs) == 20 and all(j.state in ("done", "failed") for j in jobs)

        wait_for(finished, 300, interval=0.5, what="20 finished jobs")
        jobs = store.list_jobs(limit=100)
        assert sorted(j.study_uid for j in jobs) == sorted(s.study_uid for s in studies)
        assert {j.state for j in jobs} == {"done"}
        assert {j.attempts for j in jobs} == {1}  # none run twice
        # Both processes ran jobs: each logs the structure sets it built.
        by_serve = len(re.findall(r": RTSTRUCT \S+ built", serve.log()))
        by_worker = len(re.findall(r": RTSTRUCT \S+ built", worker.log_path.read_text()))
        assert by_serve + by_worker == 20 and by_serve > 0 and by_worker > 0
        # One RTSTRUCT per study at the planning system, each delivered once.
        assert Counter(node.receipts) == Counter({j.rtstruct_uid: 1 for j in jobs})
    finally:
        worker.stop()
        serve.stop()
        node.stop()


def test_a_job_whose_worker_is_killed_is_finished_by_the_other_after_its_lease(
    tmp_path: Path,
) -> None:
    node = ReceivingNode(tmp_path / "planning", ae_title="ORTHANC", port=free_port())
    node.start()
    serve, worker = _pair(tmp_path, node.port, seconds=20.0)
    try:
        serve.start()
        worker.start()
        store = serve.store()
        template = write_template(tmp_path / "template")
        # Two studies: the receiving process (one queue worker) runs one, so the worker process
        # picks up the other.
        studies = [clone_study(template, tmp_path / f"study{i}") for i in range(2)]
        for study in studies:
            assert serve.storescu(study.folder).returncode == 0
        assert worker.proc is not None
        worker_pid = f":{worker.proc.pid}:"

        def worker_running() -> int | None:
            for job in store.list_jobs():
                if job.state == JobState.RUNNING.value and worker_pid in (job.lease_owner or ""):
                    return job.id
            return None

        job_id = wait_for(worker_running, 120, interval=0.2, what="the worker to run a job")
        worker.proc.kill()  # mid-inference: its lease is left behind
        worker.proc.wait()
        killed_at = time.time()
        wait_for(
            lambda: store.job(job_id).state == "done", 120, interval=0.5, what="the job to finish"
        )
        job = store.job(job_id)
        assert job.attempts == 2  # the killed run and the one that finished it
        assert job.stages["started"] >= killed_at  # the run that finished began after the kill
        assert f"job {job_id}: its process stopped; running it again" in serve.log()
        jobs = store.list_jobs()
        assert len(jobs) == 2 and {j.state for j in jobs} == {"done"}
        assert Counter(node.receipts) == Counter({j.rtstruct_uid: 1 for j in jobs})
    finally:
        worker.stop()
        serve.stop()
        node.stop()
