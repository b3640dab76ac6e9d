"""Scale-out, with real parts: ``aircon serve --role receiver`` and two ``aircon worker``
processes (CPU) on Debian's PostgreSQL and Redis (private servers on loopback), dcmtk storescu
senders, Orthanc as the planning system. What a region's IT checks before it relies on it:
every study contoured and delivered exactly once, and no killed process or restarted queue
server loses a study."""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from gateway.db.records import JobState
from tests.cluster import Cluster
from tests.conftest import Orthanc, wait_for
from tests.faults.harness import Study, clone_study, write_template
from tests.services import PostgresServer, RedisServer

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _studies(tmp_path: Path, n: int, first: int = 0) -> list[Study]:
    template = write_template(tmp_path / "template")
    return [clone_study(template, tmp_path / f"study{i}") for i in range(first, first + n)]


def _send_concurrently(cluster: Cluster, studies: list[Study], senders: int) -> None:
    """``senders`` storescu processes at once, each sending its share one study at a time."""
    failures: list[str] = []

    def send(share: list[Study]) -> None:
        for study in share:
            done = cluster.receiver.storescu(study.folder)
            if done.returncode != 0:
                failures.append(done.stderr[-500:])

    threads = [threading.Thread(target=send, args=(studies[i::senders],)) for i in range(senders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures


def _settled(cluster: Cluster, studies: list[Study], timeout: float = 300) -> list[Any]:
    store = cluster.store()
    uids = {s.study_uid for s in studies}

    def done() -> list[Any] | None:
        jobs = [j for j in store.list_jobs(limit=500) if j.study_uid in uids]
        finished = [j for j in jobs if j.state in ("done", "failed", "cancelled")]
        if len({j.study_uid for j in finished}) == len(uids) and len(finished) == len(jobs):
            return jobs
        return None

    return wait_for(done, timeout, interval=0.5, what=f"{len(uids)} studies to settle")


def _assert_delivered_once(orthanc: Orthanc, cluster: Cluster, jobs: list[Any]) -> None:
    """One job per study, done; at Orthanc exactly the jobs' RTSTRUCTs, one per study; and each
    delivery sent once (one successful C-STORE in the audit)."""
    assert Counter(j.study_uid for j in jobs) == Counter({j.study_uid: 1 for j in jobs})
    assert {j.state for j in jobs} == {JobState.DONE.value}, [(j.id, j.reason) for j in jobs]
    at_orthanc = [
        orthanc.get(f"/instances/{i}/simplified-tags")
        for i in orthanc.instances_of_modality("RTSTRUCT")
    ]
    uids = Counter(tags["SOPInstanceUID"] for tags in at_orthanc)
    assert uids == Counter({j.rtstruct_uid: 1 for j in jobs})
    assert Counter(tags["StudyInstanceUID"] for tags in at_orthanc) == Counter(
        {j.study_uid: 1 for j in jobs}
    )
    store = cluster.store()
    rows = store.audit_rows()
    sent = [r for r in rows if r["event"] == "delivery" and r["outcome"] == "delivered"]
    assert Counter(r["study_uid"] for r in sent) == Counter({j.study_uid: 1 for j in jobs})


@pytest.fixture
def cluster_parts(
    tmp_path: Path, postgres: PostgresServer, redis_server: RedisServer, orthanc: Orthanc
) -> dict[str, Any]:
    return {
        "root": tmp_path,
        "database_url": postgres.new_database(),
        "redis_url": redis_server.url,
        "destination_port": orthanc.dicom_port,
    }


def test_ten_studies_from_three_senders_are_contoured_and_delivered_once_by_two_workers(
    cluster_parts: dict[str, Any], orthanc: Orthanc, tmp_path: Path
) -> None:
    cluster = Cluster(**cluster_parts, model_seconds=1.0).start()
    try:
        studies = _studies(tmp_path, 10)
        _send_concurrently(cluster, studies, senders=3)
        jobs = _settled(cluster, studies)
        _assert_delivered_once(orthanc, cluster, jobs)
        assert {j.attempts for j in jobs} == {1}  # no job ran twice
        built = [len(re.findall(r": RTSTRUCT \S+ built", w.log())) for w in cluster.workers]
        assert sum(built) == 10 and min(built) > 0, built  # both workers took jobs
        receiver = cluster.receiver.log()
        assert not re.search(r": RTSTRUCT \S+ built", receiver)  # the receiver runs no model
        assert receiver.count("RTSTRUCT delivered to planning") == 10  # it delivers
    finally:
        cluster.stop()


def test_a_worker_killed_mid_inference_has_its_job_finished_by_the_other_after_the_lease(
    cluster_parts: dict[str, Any], orthanc: Orthanc, tmp_path: Path
) -> None:
    cluster = Cluster(**cluster_parts, model_seconds=15.0, lease_s=6.0).start()
    try:
        victim, other = cluster.workers
        store = cluster.store()
        studies = _studies(tmp_path, 1)
        _send_concurrently(cluster, studies, senders=1)

        def running() -> Any:
            jobs = store.list_jobs()
            return next((j for j in jobs if j.state == JobState.RUNNING.value), None)

        job = wait_for(running, 120, interval=0.1, what="a job to run")
        holder = victim if f":{victim.pid}:" in (job.lease_owner or "") else other
        survivor = other if holder is victim else victim
        expires = store.job(job.id).lease_expires_at
        holder.kill()  # SIGKILL mid-inference: its lease is left behind
        killed_at = time.time()
        jobs = _settled(cluster, studies, timeout=180)
        again = store.job(job.id)
        assert again.attempts == 2  # the killed run and the one that finished it
        # Taken back when its lease ran out, not before (the worker looks like another host).
        assert again.stages["started"] >= min(expires, killed_at + 6.0) - 0.5
        assert re.search(r": RTSTRUCT \S+ built", survivor.log())
        _assert_delivered_once(orthanc, cluster, jobs)
    finally:
        cluster.stop()


def test_a_killed_receiver_and_a_restarted_redis_lose_nothing(
    cluster_parts: dict[str, Any],
    orthanc: Orthanc,
    redis_server: RedisServer,
    tmp_path: Path,
) -> None:
    cluster = Cluster(**cluster_parts, model_seconds=2.0, quiet_s=3.0).start()
    try:
        store = cluster.store()
        first = _studies(tmp_path, 4)
        _send_concurrently(cluster, first, senders=2)
        # Every instance acknowledged, no study checked yet (quiet time): SIGKILL the receiver.
        assert cluster.receiver.proc is not None
        cluster.receiver.proc.kill()
        cluster.receiver.proc.wait()
        cluster.receiver.start()
        second = _studies(tmp_path, 4, first=4)
        _send_concurrently(cluster, second, senders=2)

        def busy() -> bool:
            states = {j.state for j in store.list_jobs(limit=100)}
            return JobState.QUEUED.value in states or JobState.RUNNING.value in states

        wait_for(busy, 120, interval=0.1, what="jobs queued for the workers")
        redis_server.restart()  # every queued task is lost with it
        jobs = _settled(cluster, first + second, timeout=300)
        _assert_delivered_once(orthanc, cluster, jobs)
        spooled = {p.stem for p in (tmp_path / "shared" / "spool").rglob("*.dcm")}
        sent = {uid for s in first + second for uid in s.sop_uids}
        assert sent <= spooled  # every acknowledged instance kept
    finally:
        cluster.stop()


def test_a_worker_stopped_with_sigterm_finishes_its_inference_first(
    cluster_parts: dict[str, Any], orthanc: Orthanc, tmp_path: Path
) -> None:
    """docker stop (SIGTERM): the running job is not abandoned to its lease."""
    cluster = Cluster(**cluster_parts, model_seconds=6.0, lease_s=30.0).start()
    try:
        store = cluster.store()
        studies = _studies(tmp_path, 1)
        _send_concurrently(cluster, studies, senders=1)

        def running() -> Any:
            return next((j for j in store.list_jobs() if j.state == JobState.RUNNING.value), None)

        job = wait_for(running, 120, interval=0.1, what="a job to run")
        holder = next(w for w in cluster.workers if f":{w.pid}:" in (job.lease_owner or ""))
        assert holder.proc is not None
        holder.proc.terminate()
        assert holder.proc.wait(60) == 0
        assert re.search(rf"job {job.id} study \S+: RTSTRUCT \S+ built", holder.log())
        jobs = _settled(cluster, studies, timeout=60)
        assert store.job(job.id).attempts == 1  # finished by the worker that was stopping
        _assert_delivered_once(orthanc, cluster, jobs)
    finally:
        cluster.stop()
