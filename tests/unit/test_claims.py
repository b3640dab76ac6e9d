"""The database guards every claim: readiness while an association is open, one job per study
and rule across processes, leases that expire and are taken back, timings fixed once."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from gateway.db.database import Store
from gateway.db.records import JobState
from gateway.db.work import timings
from gateway.pipeline import Pipeline
from gateway.scheduler import Scheduler, owner_is_dead
from tests.unit.test_pipeline_unit import (
    STUDY,
    T0,
    Clock,
    FakeSender,
    RecordingDispatcher,
    make_config,
    receive,
    recheck_at,
)


def send(
    store: Store,
    heights: list[float],
    at: float,
    study: str = STUDY,
    opens: bool = True,
    first: int = 0,
) -> None:
    """One association sending a series: the first instance opens it for the study."""
    receive(
        store, heights, at, study=study, series=f"{study}.2", first=first, step_s=0.5, opens=opens
    )


def make_pipeline(tmp_path: Path, store: Store, clock: Clock, dispatcher=None) -> Pipeline:
    return Pipeline(
        make_config(tmp_path),
        store,
        dispatcher or RecordingDispatcher(),
        segmenters=object(),
        clock=clock,
        sender=FakeSender(),
        owner="test:1:x",
    )


def test_a_study_resent_while_its_first_job_is_done_waits_for_the_association_to_end(
    tmp_path: Path,
    database_url: str,
) -> None:
    """Defect: a readiness check left over from the first job found the series quiet while an
    association was still sending the study again, and queued a job on partial inputs."""
    store = Store(database_url)
    clock = Clock(T0)
    dispatcher = RecordingDispatcher()
    pipeline = make_pipeline(tmp_path, store, clock, dispatcher)
    send(store, [0.0, 3.0, 6.0, 9.0], at=T0)
    store.association_ended([STUDY], clean=True, now=T0 + 2)
    clock.t = T0 + 20
    pipeline.check_study(STUDY)
    [first] = store.jobs_for(STUDY, "mr")
    store.update_job(first.id, state=JobState.DONE, stage="delivered", now=T0 + 25)

    # The same study again: the association opens with the first instances, and stays open
    # (other series of the study follow) long past series_quiet_s.
    send(store, [0.0, 3.0], at=T0 + 100)
    for t in (T0 + 115, T0 + 200, T0 + 900):
        clock.t = t
        pipeline.check_study(STUDY)  # e.g. a check left over from the first job
        assert [j.id for j in store.jobs_for(STUDY, "mr")] == [first.id]
        assert store.list_studies()[0]["reason"] == "being received"
    send(store, [6.0, 9.0], at=T0 + 901, opens=False, first=2)
    store.association_ended([STUDY], clean=True, now=T0 + 905)
    assert recheck_at(store) == T0 + 905  # the association's end asks for the next check
    clock.t = T0 + 905
    pipeline.check_study(STUDY)  # quiet not yet: waits
    clock.t = T0 + 920
    pipeline.check_study(STUDY)
    jobs = store.jobs_for(STUDY, "mr")
    assert [j.state for j in jobs] == ["done", "queued"]
    assert jobs[1].stages["received_first"] == T0 + 100  # this job's instances, not the study's
    assert dispatcher.runs == [first.id, jobs[1].id]


def test_timings_are_recorded_once_from_the_jobs_own_instances(
    tmp_path: Path, database_url: str
) -> None:
    """Defect: 'receive' counted from the study's first-ever instance, and a job's timings
    changed when the study was sent again later."""
    store = Store(database_url)
    clock = Clock(T0)
    pipeline = make_pipeline(tmp_path, store, clock)
    send(store, [0.0, 3.0, 6.0, 9.0], at=T0)  # instances at T0 .. T0 + 1.5
    store.association_ended([STUDY], clean=True, now=T0 + 2)
    clock.t = T0 + 12
    pipeline.check_study(STUDY)
    [job] = store.jobs_for(STUDY, "mr")
    store.update_job(job.id, state=JobState.DONE, stage="delivered", now=T0 + 20)
    before = timings(store.job(job.id))
    assert before["receive"] == 1.5 and before["assemble"] == 10.5 and before["total"] == 18.5

    send(store, [0.0, 3.0, 6.0, 9.0], at=T0 + 500)  # sent again: a second job
    store.association_ended([STUDY], clean=True, now=T0 + 502)
    clock.t = T0 + 512
    pipeline.check_study(STUDY)
    assert timings(store.job(job.id)) == before
    second = store.jobs_for(STUDY, "mr")[1]
    assert timings(second)["receive"] == 1.5


def test_two_processes_checking_the_same_studies_make_one_job_each(
    tmp_path: Path, database_url: str
) -> None:
    url = database_url
    setup = Store(url)
    studies = [f"{STUDY}.{i}" for i in range(20)]
    for uid in studies:
        send(setup, [0.0, 3.0, 6.0], at=T0, study=uid)
        setup.association_ended([uid], clean=True, now=T0 + 2)
    clock = Clock(T0 + 30)
    dispatchers = [RecordingDispatcher(), RecordingDispatcher()]
    pipelines = [make_pipeline(tmp_path, Store(url), clock, dispatchers[i]) for i in range(2)]
    barrier = threading.Barrier(2)

    def check_all(p: Pipeline) -> None:
        barrier.wait()
        for uid in studies:
            p.check_study(uid)

    threads = [threading.Thread(target=check_all, args=(p,)) for p in pipelines]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    jobs = [j for uid in studies for j in setup.jobs_for(uid, "mr")]
    assert len(jobs) == 20 and {j.state for j in jobs} == {"queued"}
    queued = sorted(dispatchers[0].runs + dispatchers[1].runs)
    assert queued == sorted(j.id for j in jobs)  # each job handed to a queue exactly once
    # Both claim every job; each job is claimed (run) once.
    claims = [
        p.store.claim_job(j.id, f"p{i}:1:x", T0 + 31, 60)
        for j in jobs
        for i, p in enumerate(pipelines)
    ]
    assert sum(claims) == 20
    assert {setup.job(j.id).attempts for j in jobs} == {1}


def test_an_expired_lease_or_a_dead_owner_gives_the_job_back(
    tmp_path: Path, database_url: str
) -> None:
    store = Store(database_url)
    job = store.create_job(STUDY, "mr", ["pelvis"], T0)
    store.update_job(job.id, state=JobState.QUEUED)
    assert store.claim_job(job.id, "elsewhere:4242:x", T0, lease_s=30)
    assert not store.claim_job(job.id, "here:1:y", T0, lease_s=30)  # held
    alive = lambda owner: False  # noqa: E731
    assert store.reclaim(T0 + 10, alive) == ([], [])
    store.renew_leases("elsewhere:4242:x", T0 + 25, lease_s=30)
    assert store.reclaim(T0 + 40, alive) == ([], [])  # renewed until T0 + 55
    assert store.reclaim(T0 + 56, alive) == ([job.id], [])
    assert store.job(job.id).state == JobState.QUEUED.value
    assert store.claim_job(job.id, "here:1:y", T0 + 57, lease_s=30)
    assert store.job(job.id).attempts == 2
    # A dead process of this host is known at once, without waiting for its lease.
    store.update_job(job.id, state=JobState.QUEUED)
    assert store.claim_job(job.id, "host:999999999:z", T0 + 60, lease_s=3600)
    assert store.reclaim(T0 + 61, lambda owner: owner.startswith("host:")) == ([job.id], [])


def test_owner_is_dead_only_for_gone_processes_of_this_host() -> None:
    import os

    from gateway.scheduler import HOST

    assert not owner_is_dead(f"{HOST}:{os.getpid()}:x")
    assert owner_is_dead(f"{HOST}:999999999:x")
    assert not owner_is_dead("some-other-host:999999999:x")


def test_a_due_check_runs_in_one_of_two_schedulers(tmp_path: Path, database_url: str) -> None:
    url = database_url
    store = Store(url)
    send(store, [0.0, 3.0], at=T0)
    store.association_ended([STUDY], clean=True, now=T0 + 2)
    ran: list[str] = []
    schedulers = [
        Scheduler(
            Store(url),
            ran.append,
            RecordingDispatcher(),
            f"s{i}:1:x",
            poll_s=0.1,
            lease_s=30,
            clock=lambda: T0 + 3,
        )
        for i in range(2)
    ]
    for s in schedulers:
        s.tick()
    assert ran == [STUDY]
    assert recheck_at(store) is None


@pytest.mark.parametrize("clean", [True, False])
def test_two_associations_sending_one_study_both_must_end(
    tmp_path: Path, database_url: str, clean: bool
) -> None:
    store = Store(database_url)
    clock = Clock(T0)
    pipeline = make_pipeline(tmp_path, store, clock)
    send(store, [0.0, 3.0], at=T0)  # association 1
    send(store, [0.0, 3.0], at=T0 + 1, opens=True)  # association 2, the same instances
    store.association_ended([STUDY], clean=clean, now=T0 + 2)
    clock.t = T0 + 100
    pipeline.check_study(STUDY)
    assert store.jobs_for(STUDY, "mr") == []
    store.association_ended([STUDY], clean=True, now=T0 + 101)
    clock.t = T0 + 200
    pipeline.check_study(STUDY)
    assert len(store.jobs_for(STUDY, "mr")) == 1
