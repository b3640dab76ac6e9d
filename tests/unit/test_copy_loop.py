"""A classic copy a PACS forwards back to us is not new input: no second job, no second
structure set; a real new instance still is."""

from __future__ import annotations

from pathlib import Path

from gateway.db.database import Store
from gateway.db.records import JobState
from gateway.job import Artifact, JobOutcome
from gateway.pipeline import Pipeline
from tests.unit.test_pipeline_unit import (
    STUDY,
    T0,
    Clock,
    FakeSender,
    RecordingDispatcher,
    make_config,
    receive,
)

COPY_SERIES = "1.2.840.99.1.77"


def test_our_own_classic_copy_coming_back_starts_no_job(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'aircon.db'}")
    clock, dispatcher = Clock(T0), RecordingDispatcher()
    pipeline = Pipeline(
        make_config(tmp_path),
        store,
        dispatcher,
        segmenters=object(),
        clock=clock,
        sender=FakeSender(),
        owner="test:1:x",
    )
    receive(store, [0.0, 3.0, 6.0], at=T0)
    clock.t = T0 + 60
    pipeline.check_study(STUDY)
    [job] = store.jobs_for(STUDY, "mr")
    assert dispatcher.runs == [job.id]
    copies = tuple(
        Artifact(kind="image", path=f"/out/{k}.dcm", uid=f"{COPY_SERIES}.{k + 1}") for k in range(3)
    )
    store.finish_run(job.id, JobOutcome(artifacts=copies), "1.2.3", "/out/rt.dcm", [], T0 + 61)
    store.update_job(job.id, state=JobState.DONE)

    # The PACS sends the copy back (its series holds only images we made): nothing new.
    receive(store, [0.0, 3.0, 6.0], at=T0 + 100, series=COPY_SERIES)
    clock.t = T0 + 200
    pipeline.check_study(STUDY)
    assert [j.id for j in store.jobs_for(STUDY, "mr")] == [job.id]
    assert dispatcher.runs == [job.id]

    # A real new series is new input: a second job.
    receive(store, [0.0, 3.0, 6.0, 9.0], at=T0 + 300, series="1.2.840.99.1.88")
    clock.t = T0 + 400
    pipeline.check_study(STUDY)
    assert len(store.jobs_for(STUDY, "mr")) == 2
