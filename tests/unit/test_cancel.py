"""Cancelling a job: in every state, while it runs, across a restart, and what the study's
next check, retention and a resend do with it. The run uses a real (phantom) study on disk and
a fake model, so the preview made at the end is checked here too."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread

from gateway.db.database import Store
from gateway.db.records import DeliveryState, JobState
from gateway.demo.phantom import make_phantom, write_dicom_series
from gateway.errors import PermanentError
from gateway.pipeline import Pipeline
from gateway.receive.receiver import Receiver
from gateway.receive.spool import Spool
from tests.unit.test_pipeline_unit import (
    STUDY,
    T0,
    Clock,
    FakeSender,
    RecordingDispatcher,
    delivering_job,
    make_config,
    receive,
)


@pytest.fixture
def parts(tmp_path: Path) -> tuple[Pipeline, Store, RecordingDispatcher, Clock, FakeSender]:
    store = Store(f"sqlite:///{tmp_path / 'aircon.db'}")
    dispatcher, clock, sender = RecordingDispatcher(), Clock(T0), FakeSender()
    pipeline = Pipeline(
        make_config(tmp_path),
        store,
        dispatcher,
        segmenters=object(),
        clock=clock,
        sender=sender,
        owner="test:1:x",
    )
    return pipeline, store, dispatcher, clock, sender


def _audited(store: Store, job_id: int) -> list[str]:
    return [
        r["detail"]
        for r in store.audit_rows()
        if r["event"] == "job" and r["outcome"] == "cancelled" and r["job_id"] == job_id
    ]


@pytest.mark.parametrize("state", ["waiting", "queued", "failed"])
def test_a_job_not_yet_delivered_is_cancelled_and_audited_with_who(parts: Any, state: str) -> None:
    pipeline, store, dispatcher, clock, _ = parts
    job = store.create_job(STUDY, "mr", ["pelvis"], T0)
    store.update_job(job.id, state=JobState(state))
    assert pipeline.cancel(job.id, "alice") == f"job {job.id}: cancelled (was {state})"
    job = store.job(job.id)
    assert (job.state, job.reason) == ("cancelled", "cancelled by alice")
    assert _audited(store, job.id) == [f"rule mr: by alice (was {state})"]
    # Never claimed again, whoever dispatched it.
    pipeline.run_job(job.id)
    assert store.job(job.id).state == "cancelled"


def test_pending_and_parked_deliveries_are_cancelled_and_never_sent(
    parts: Any, tmp_path: Path
) -> None:
    pipeline, store, dispatcher, clock, sender = parts
    pending_job, pending = delivering_job(store, tmp_path)
    parked_job, parked = delivering_job(store, tmp_path)
    store.update_delivery(parked, state=DeliveryState.FAILED, last_status="parked")
    store.settle_job(parked_job, T0)
    assert store.job(parked_job).state == "failed"

    pipeline.cancel(pending_job, "bob")
    pipeline.cancel(parked_job, "bob")

    assert [store.delivery(d).state for d in (pending, parked)] == ["cancelled"] * 2
    pipeline.deliver(pending)
    assert sender.calls == []
    pipeline.recover(receiving=False)
    assert dispatcher.deliveries == [] and dispatcher.runs == []
    assert [store.job(j).state for j in (pending_job, parked_job)] == ["cancelled"] * 2


def test_a_done_job_or_a_cancelled_one_cannot_be_cancelled(parts: Any, tmp_path: Path) -> None:
    pipeline, store, *_ = parts
    job_id, delivery = delivering_job(store, tmp_path)
    pipeline.deliver(delivery)
    assert store.job(job_id).state == "done"
    with pytest.raises(PermanentError, match="done and delivered everywhere"):
        pipeline.cancel(job_id, "carol")
    assert store.delivery(delivery).state == "delivered"
    other, _ = delivering_job(store, tmp_path)
    pipeline.cancel(other, "carol")
    with pytest.raises(PermanentError, match="already cancelled"):
        pipeline.cancel(other, "carol")
    with pytest.raises(KeyError):
        pipeline.cancel(9999, "carol")


def test_a_delivery_being_sent_when_cancelled_is_not_retried(parts: Any, tmp_path: Path) -> None:
    pipeline, store, dispatcher, clock, sender = parts
    job_id, delivery = delivering_job(store, tmp_path)
    from gateway.errors import PeerUnavailable

    def cancel_while_sending(*args: Any, **kwargs: Any) -> None:
        pipeline.cancel(job_id, "dave")
        raise PeerUnavailable("down")

    pipeline.delivery.sender = cancel_while_sending
    pipeline.deliver(delivery)
    assert store.delivery(delivery).state == "cancelled"
    clock.t += 3600
    pipeline.deliver(delivery)  # the retry the failed attempt scheduled
    assert store.delivery(delivery).state == "cancelled"
    assert store.job(job_id).state == "cancelled"


def test_check_study_opens_no_new_job_after_a_cancel_until_the_study_is_sent_again(
    parts: Any,
) -> None:
    pipeline, store, dispatcher, clock, _ = parts
    receive(store, [0.0, 3.0, 6.0, 9.0], at=T0, step_s=3.0)  # the last at T0 + 9
    clock.t = T0 + 4
    pipeline.check_study(STUDY)  # opened while the series is still arriving
    [job] = store.jobs_for(STUDY, "mr")
    assert job.state == "waiting"
    clock.t = T0 + 12
    pipeline.cancel(job.id, "erin")  # the operator saw all of it
    for t in (T0 + 20, T0 + 400):  # quiet, then past the study timeout
        clock.t = t
        pipeline.check_study(STUDY)
    assert [j.state for j in store.jobs_for(STUDY, "mr")] == ["cancelled"]
    assert dispatcher.runs == []

    receive(store, [0.0, 3.0, 6.0, 9.0], at=T0 + 500)  # sent again
    clock.t = T0 + 511
    pipeline.check_study(STUDY)
    assert [j.state for j in store.jobs_for(STUDY, "mr")] == ["cancelled", "queued"]


def test_retention_treats_a_cancelled_job_like_a_done_one(parts: Any, tmp_path: Path) -> None:
    from gateway.config import StorageConfig
    from gateway.retention import DAY_S, purge

    pipeline, store, *_ = parts
    out = tmp_path / "out"
    old = T0 - 40 * DAY_S
    receive(store, [0.0, 3.0], at=old)
    job = store.create_job(STUDY, "mr", ["pelvis"], old)
    rt, png = out / STUDY / "rt.dcm", out / STUDY / "rt.png"
    rt.parent.mkdir(parents=True)
    rt.write_bytes(b"DICM")
    png.write_bytes(b"PNG")
    store.update_job(
        job.id, state=JobState.DELIVERING, rtstruct_path=str(rt), preview_path=str(png)
    )
    store.create_deliveries(job.id, ["planning"])
    assert purge(store, StorageConfig(retention_days=30), (out,), now=T0).studies == 0
    pipeline.cancel(job.id, "frank")
    report = purge(store, StorageConfig(retention_days=30), (out,), now=T0)
    assert report.studies == 1
    assert not rt.exists() and not png.exists()
    assert store.job(job.id).preview_path is None


# -- a real run ------------------------------------------------------------------------------


class CancellingSegmenter:
    """A threshold 'model'; with ``cancel`` set, the operator cancels the job while it runs."""

    def __init__(self) -> None:
        self.cancel: Any = None
        self.calls = 0

    def get(self, spec: Any) -> CancellingSegmenter:
        return self

    def predict(self, channels: Any, grid: Any) -> np.ndarray:
        self.calls += 1
        if self.cancel is not None:
            self.cancel()
        return (channels[0] > np.percentile(channels[0], 90)).astype(np.uint8)


@pytest.fixture(scope="module")
def phantom_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("phantom")
    return write_dicom_series(make_phantom(5, shape=(8, 48, 48)), folder, seed=5).files


def test_a_job_cancelled_while_it_runs_is_not_delivered_nor_revived_and_resend_runs_it(
    tmp_path: Path, phantom_files: list[Path]
) -> None:
    cfg = make_config(tmp_path)
    store = Store(f"sqlite:///{tmp_path / 'aircon.db'}")
    receiver = Receiver(Spool(cfg.paths.spool), store)
    for f in phantom_files:
        receiver.accept(dcmread(f), f.read_bytes(), "SCANNER", "AIRCON")
    [study] = store.list_studies()
    dispatcher, segmenter = RecordingDispatcher(), CancellingSegmenter()
    clock = Clock(time.time() + 60)
    pipeline = Pipeline(
        cfg, store, dispatcher, segmenters=segmenter, clock=clock, sender=FakeSender(), owner="t:1"
    )
    pipeline.check_study(study["study_uid"])
    [job_id] = dispatcher.runs
    said: list[str] = []
    segmenter.cancel = lambda: said.append(pipeline.cancel(job_id, "grace"))

    pipeline.run_job(job_id)

    assert said == [f"job {job_id}: cancelled; it is running and stops at its next stage"]
    job = store.job(job_id)
    assert (job.state, job.lease_owner) == ("cancelled", None)
    assert store.deliveries_for(job_id) == [] and dispatcher.deliveries == []
    assert job.rtstruct_path is None  # stopped after the model, before the structure set
    pipeline.recover(receiving=False)
    pipeline.run_job(job_id)
    assert segmenter.calls == 1 and dispatcher.runs == [job_id]
    assert store.job(job_id).state == "cancelled"

    # Resend takes it up again: it runs, and its structure set and preview are made.
    segmenter.cancel = None
    assert pipeline.resend(job_id) == f"job {job_id}: queued to run again"
    pipeline.run_job(job_id)
    job = store.job(job_id)
    assert job.state == "delivering"
    assert [d.state for d in store.deliveries_for(job_id)] == ["pending"]
    preview = Path(job.preview_path)
    assert preview == Path(job.rtstruct_path).with_suffix(".png")
    assert preview.parent == cfg.paths.output / study["study_uid"]
    assert Image.open(preview).format == "PNG"
    yellow = np.all(np.asarray(Image.open(preview).convert("RGB")) == (255, 255, 0), axis=-1)
    assert yellow.sum() > 20  # the Bladder's outline, in its colour


def test_a_job_cancelled_after_its_structure_set_is_resent_to_the_rule_s_destinations(
    tmp_path: Path, phantom_files: list[Path]
) -> None:
    """Cancelled between the structure set and its deliveries: none opened; a resend opens
    them for the rule's destinations."""
    cfg = make_config(tmp_path)
    store = Store(f"sqlite:///{tmp_path / 'aircon.db'}")
    receiver = Receiver(Spool(cfg.paths.spool), store)
    for f in phantom_files:
        receiver.accept(dcmread(f), f.read_bytes(), "SCANNER", "AIRCON")
    [study] = store.list_studies()
    dispatcher, segmenter = RecordingDispatcher(), CancellingSegmenter()
    pipeline = Pipeline(
        cfg,
        store,
        dispatcher,
        segmenters=segmenter,
        clock=Clock(time.time() + 60),
        sender=FakeSender(),
        owner="t:1",
    )
    pipeline.check_study(study["study_uid"])
    [job_id] = dispatcher.runs
    real_finish = store.finish_run

    def cancel_then_finish(*args: Any, **kwargs: Any) -> Any:
        pipeline.cancel(job_id, "heidi")
        return real_finish(*args, **kwargs)

    store.finish_run = cancel_then_finish  # type: ignore[method-assign]
    pipeline.run_job(job_id)
    job = store.job(job_id)
    assert job.state == "cancelled" and job.lease_owner is None
    assert job.rtstruct_path and Path(job.rtstruct_path).is_file() and job.preview_path
    assert store.deliveries_for(job_id) == [] and dispatcher.deliveries == []

    assert pipeline.resend(job_id) == f"job {job_id}: 1 delivery(ies) queued again"
    [d] = store.deliveries_for(job_id)
    assert (d.destination, d.state) == ("planning", "pending")
    assert store.job(job_id).state == "delivering"


def test_aircon_cancel_with_who_and_its_refusals(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import yaml

    from gateway.cli import main
    from gateway.config import load_config

    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"database": {"url": "sqlite:///aircon.db"}}))
    store = Store(load_config(config).database.url)
    job = store.create_job("1.2.3", "mr", ["pelvis"], now=1000.0)

    assert main(["-c", str(config), "cancel", str(job.id), "--by", "ivan"]) == 0
    assert f"job {job.id}: cancelled (was waiting)" in capsys.readouterr().out
    assert store.job(job.id).state == "cancelled"
    assert _audited(store, job.id) == ["rule mr: by ivan (was waiting)"]
    assert main(["-c", str(config), "cancel", str(job.id), "--by", "ivan"]) == 1
    assert "already cancelled" in capsys.readouterr().err
    assert main(["-c", str(config), "cancel", "999", "--by", "ivan"]) == 1
    assert "no job 999" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["-c", str(config), "cancel", str(job.id)])  # who is required
