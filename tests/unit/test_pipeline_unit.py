"""The pipeline's sequencing with a fake clock, a recording dispatcher and a faked C-STORE."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gateway.config import GatewayConfig
from gateway.db.database import Store
from gateway.db.records import DeliveryState, InstanceRecord, JobState
from gateway.deliver.delivery import backoff_delay
from gateway.errors import DeliveryRejected, PeerBusy, PeerUnavailable
from gateway.job import JobOutcome, ModelOutcome, ModelState, stage_timings
from gateway.pipeline import Pipeline

STUDY = "1.2.840.99.1"
SERIES = "1.2.840.99.1.2"
T0 = 10_000.0


# -- backoff -------------------------------------------------------------------------------------


def test_backoff_doubles_within_jitter_and_is_capped() -> None:
    rng = random.Random(1)
    for attempt, nominal in [(1, 5), (2, 10), (3, 20), (4, 40), (5, 80), (8, 640)]:
        delays = [backoff_delay(attempt, 5.0, 900.0, rng) for _ in range(200)]
        assert min(delays) >= 0.8 * nominal and max(delays) <= 1.2 * nominal
        assert max(delays) - min(delays) > 0.2 * nominal  # the jitter is really there
    capped = [backoff_delay(20, 5.0, 900.0, rng) for _ in range(200)]
    assert 0.8 * 900 <= min(capped) and max(capped) <= 1.2 * 900
    assert backoff_delay(0, 5.0, 900.0, random.Random(1)) == backoff_delay(
        1, 5.0, 900.0, random.Random(1)
    )


def test_stage_timings_from_recorded_timestamps() -> None:
    stages = {
        "created": 5.0,
        "received_first": 0.0,
        "received_last": 12.0,
        "ready": 20.0,
        "started": 21.0,
        "volume": 23.0,
        "segment": 33.0,
        "rtstruct": 34.0,
        "delivered": 36.5,
    }
    assert stage_timings(stages) == {
        "receive": 12.0,
        "assemble": 8.0,
        "queue": 1.0,
        "volume": 2.0,
        "segment": 10.0,
        "rtstruct": 1.0,
        "send": 2.5,
        "total": 24.5,
    }
    # Waiting for a model another job was using is 'wait', not 'segment'.
    waited = JobOutcome(
        models={"m": ModelOutcome(state=ModelState.DONE, wait_s=6.0, segment_s=4.0)}
    )
    timings = stage_timings(stages, waited)
    assert (timings["wait"], timings["segment"]) == (6.0, 4.0)
    assert stage_timings({"created": 1.0}) == {}


# -- fakes ---------------------------------------------------------------------------------------


@dataclass
class RecordingDispatcher:
    runs: list[int] = field(default_factory=list)
    deliveries: list[tuple[int, float]] = field(default_factory=list)
    comparisons: list[str] = field(default_factory=list)

    def compare(self, structure_set_uid: str) -> None:
        self.comparisons.append(structure_set_uid)

    def run_job(self, job_id: int) -> None:
        self.runs.append(job_id)

    def deliver(self, delivery_id: int, delay: float = 0.0) -> None:
        self.deliveries.append((delivery_id, delay))


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class FakeSender:
    """The delivery's Sender seam: raises the queued errors in turn, then succeeds."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls: list[tuple[str, str, list[Path]]] = []

    def __call__(self, dest, calling_ae, files, *, timeout=30.0, progress=None, before_send=None):  # noqa: ANN001, E501
        self.calls.append((dest.ae_title, calling_ae, list(files)))
        if self.errors:
            raise self.errors.pop(0)
        return [0] * len(files)


def make_config(tmp_path: Path, max_attempts: int = 3) -> GatewayConfig:
    model = {
        "name": "pelvis",
        "kind": "nnunet",
        "version": "1",
        "nnunet": {"folder": "nnunet"},
        "inputs": [{"name": "T2", "select": {"Modality": "^MR$"}}],
        "labels": {1: {"name": "Bladder", "color": [255, 255, 0]}},
    }
    return GatewayConfig.model_validate(
        {
            "destinations": {"planning": {"ae_title": "TPS", "host": "127.0.0.1", "port": 104}},
            "paths": {"spool": tmp_path / "spool", "output": tmp_path / "out"},
            "assembly": {"series_quiet_s": 10, "study_timeout_s": 300},
            "delivery": {"max_attempts": max_attempts, "backoff_base_s": 5, "backoff_max_s": 60},
            "rules": [
                {
                    "name": "mr",
                    "match": {"series": {"Modality": "^MR$"}},
                    "models": ["pelvis"],
                    "destinations": ["planning"],
                }
            ],
            "models": {"pelvis": model},
        }
    )


@pytest.fixture
def store(database_url: str) -> Store:
    return Store(database_url)


@pytest.fixture
def clock() -> Clock:
    return Clock(T0)


@pytest.fixture
def dispatcher() -> RecordingDispatcher:
    return RecordingDispatcher()


@pytest.fixture
def sender() -> FakeSender:
    return FakeSender()


@pytest.fixture
def pipeline(
    tmp_path: Path,
    store: Store,
    dispatcher: RecordingDispatcher,
    clock: Clock,
    sender: FakeSender,
):
    return Pipeline(
        make_config(tmp_path),
        store,
        dispatcher,
        segmenters=object(),
        clock=clock,
        sender=sender,
        owner="test:1:x",
    )


def recheck_at(store: Store, study_uid: str = STUDY) -> float | None:
    from gateway.db.tables import StudyRow

    with store.session() as s:
        row = s.get(StudyRow, study_uid)
        return None if row is None else row.recheck_at


def receive(
    store: Store,
    heights: list[float],
    at: float,
    modality: str = "MR",
    *,
    study: str = STUDY,
    series: str | None = None,
    first: int = 0,
    step_s: float = 0.0,
    opens: bool = False,
) -> None:
    """Record one slice per height in one series (instances ``first + 1`` ...), the k-th at
    ``at + k * step_s``; ``opens``: the first instance opens an association for the study."""
    series = series or (SERIES if study == STUDY else f"{study}.2")
    for k, z in enumerate(heights):
        store.record_instance(
            InstanceRecord(
                study_uid=study,
                series_uid=series,
                sop_instance_uid=f"{series}.{first + k + 1}",
                sop_class_uid="1.2.840.10008.5.1.4.1.1.4",
                path=f"/spool/{k}.dcm",
                series_attributes={"Modality": modality, "SeriesNumber": 3},
                geometry={
                    "FrameOfReferenceUID": "1.2.840.99.5",
                    "ImagePositionPatient": [0.0, 0.0, z],
                    "ImageOrientationPatient": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
                    "PixelSpacing": [0.5, 0.5],
                    "Rows": 64,
                    "Columns": 64,
                },
            ),
            calling_ae="SCANNER",
            called_ae="AIRCON",
            now=at + k * step_s,
            opens_association=opens and k == 0,
        )


# -- assemble ------------------------------------------------------------------------------------


def test_study_waits_then_queues_exactly_one_job_when_quiet(
    pipeline: Pipeline, store: Store, dispatcher: RecordingDispatcher, clock: Clock
) -> None:
    receive(store, [0.0, 3.0, 6.0, 9.0], at=T0)
    clock.t = T0 + 4
    pipeline.check_study(STUDY)
    [job] = store.jobs_for(STUDY, "mr")
    assert job.state == JobState.WAITING.value
    assert job.reason == "pelvis: input 0 'T2': series still receiving"
    assert dispatcher.runs == []
    assert recheck_at(store) == pytest.approx(T0 + 10)  # when the series will be quiet

    clock.t = T0 + 10
    pipeline.check_study(STUDY)
    pipeline.check_study(STUDY)  # a duplicate check (the SCP asks at every association end)
    clock.t = T0 + 30
    pipeline.check_study(STUDY)
    [job] = store.jobs_for(STUDY, "mr")
    assert job.state == JobState.QUEUED.value
    assert job.input_series == [SERIES]
    assert job.stages["ready"] == T0 + 10
    assert dispatcher.runs == [job.id]


def test_instances_received_after_the_job_opened_but_before_it_was_ready_open_no_new_job(
    pipeline: Pipeline, store: Store, dispatcher: RecordingDispatcher, clock: Clock
) -> None:
    """The job opens while a second association is still sending; the inputs it used include
    those instances, so a check after it finished must not open a second job."""
    receive(store, [0.0, 3.0, 6.0, 9.0], at=T0)
    clock.t = T0 + 4
    pipeline.check_study(STUDY)  # opened, waiting
    receive(store, [0.0, 3.0, 6.0, 9.0], at=T0 + 6)  # the same series, still arriving
    clock.t = T0 + 17
    pipeline.check_study(STUDY)
    [job] = store.jobs_for(STUDY, "mr")
    assert job.state == JobState.QUEUED.value
    store.update_job(job.id, state=JobState.DONE, stage="delivered")
    clock.t = T0 + 30
    pipeline.check_study(STUDY)  # the check the second association's end asked for
    assert [j.id for j in store.jobs_for(STUDY, "mr")] == [job.id]


def test_study_without_matching_rule_opens_no_job_and_says_why_once(
    pipeline: Pipeline,
    store: Store,
    dispatcher: RecordingDispatcher,
    clock: Clock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    receive(store, [0.0, 3.0], at=T0, modality="CT")
    clock.t = T0 + 100
    with caplog.at_level("INFO", logger="gateway.pipeline"):
        pipeline.check_study(STUDY)
        pipeline.check_study(STUDY)  # checked again: the reason is not logged again
    pipeline.check_study("1.2.3.4.5")  # unknown study
    assert store.jobs_for(STUDY, "mr") == []
    assert dispatcher == RecordingDispatcher()
    [study] = store.list_studies()
    assert study["reason"].startswith("no rule matches: rule mr: Modality")
    assert "'CT'" in study["reason"]
    assert sum("no rule matches" in r.getMessage() for r in caplog.records) == 1


def test_study_that_never_completes_fails_after_the_timeout(
    pipeline: Pipeline, store: Store, dispatcher: RecordingDispatcher, clock: Clock
) -> None:
    receive(store, [0.0, 3.0, 9.0, 12.0], at=T0)  # slice at 6 mm missing
    clock.t = T0 + 20
    pipeline.check_study(STUDY)
    [job] = store.jobs_for(STUDY, "mr")
    assert job.state == JobState.WAITING.value
    assert "gap in slice positions" in job.reason
    assert recheck_at(store) == pytest.approx(T0 + 20 + 300)  # the deadline

    clock.t = T0 + 20 + 300
    pipeline.check_study(STUDY)
    [job] = store.jobs_for(STUDY, "mr")
    assert job.state == JobState.FAILED.value
    assert job.reason.startswith(
        "pelvis: not ready after 300 s: input 0 'T2': series 3 is not one volume"
    )
    assert "gap in slice positions: 6.00 mm step" in job.reason
    assert dispatcher.runs == []


def test_new_instances_after_a_failed_job_open_a_new_job(
    pipeline: Pipeline, store: Store, dispatcher: RecordingDispatcher, clock: Clock
) -> None:
    receive(store, [0.0, 3.0, 9.0], at=T0)
    clock.t = T0 + 20
    pipeline.check_study(STUDY)  # opens the job: its timeout runs from here
    clock.t = T0 + 400
    pipeline.check_study(STUDY)
    assert [j.state for j in store.jobs_for(STUDY, "mr")] == ["failed"]
    receive(store, [0.0, 3.0, 6.0, 9.0], at=T0 + 500)  # the scanner sends it again, complete
    clock.t = T0 + 511
    pipeline.check_study(STUDY)
    jobs = store.jobs_for(STUDY, "mr")
    assert [j.state for j in jobs] == ["failed", "queued"]
    assert dispatcher.runs == [jobs[1].id]


# -- deliver -------------------------------------------------------------------------------------


def delivering_job(store: Store, tmp_path: Path) -> tuple[int, int]:
    """A job (of its own study) whose RTSTRUCT is built and whose one delivery is pending."""
    rt = tmp_path / "rtstruct.dcm"
    rt.write_bytes(b"DICM")
    study = f"{STUDY}.{len(store.list_jobs()) + 1}"
    job = store.create_job(study, "mr", ["pelvis"], T0)
    store.update_job(job.id, state=JobState.DELIVERING, rtstruct_path=str(rt))
    [delivery_id] = store.create_deliveries(job.id, ["planning"])
    return job.id, delivery_id


def test_retriable_failure_backs_off_then_parks_after_max_attempts(
    pipeline: Pipeline,
    store: Store,
    dispatcher: RecordingDispatcher,
    clock: Clock,
    tmp_path: Path,
    sender: FakeSender,
) -> None:
    job_id, did = delivering_job(store, tmp_path)
    sender.errors = [
        PeerUnavailable("TPS@127.0.0.1:104: association failed"),
        PeerBusy("TPS answered 0xA700"),
        PeerUnavailable("refused"),
    ]
    fake = sender

    pipeline.deliver(did)
    d = store.delivery(did)
    assert (d.state, d.attempts) == ("pending", 1)
    assert d.last_status == "TPS@127.0.0.1:104: association failed"
    [(_, delay1)] = dispatcher.deliveries
    assert 4.0 <= delay1 <= 6.0
    assert d.next_attempt_at == pytest.approx(T0 + delay1)
    assert store.job(job_id).state == JobState.DELIVERING.value

    pipeline.deliver(did)  # dispatched early (e.g. recover()): not due yet, nothing is sent
    assert len(fake.calls) == 1

    clock.t = d.next_attempt_at
    pipeline.deliver(did)
    d = store.delivery(did)
    assert (d.state, d.attempts, d.last_status) == ("pending", 2, "TPS answered 0xA700")
    delay2 = dispatcher.deliveries[-1][1]
    assert 8.0 <= delay2 <= 12.0

    clock.t = d.next_attempt_at
    pipeline.deliver(did)
    d = store.delivery(did)
    assert d.state == DeliveryState.FAILED.value
    assert d.attempts == 3
    assert d.last_status == "parked after 3 attempts: refused"
    assert len(dispatcher.deliveries) == 2  # no further retry scheduled
    job = store.job(job_id)
    assert job.state == JobState.FAILED.value
    assert job.reason == "delivery failed: planning: parked after 3 attempts: refused"
    assert [c[:2] for c in fake.calls] == [("TPS", "AIRCON")] * 3
    assert fake.calls[0][2] == [tmp_path / "rtstruct.dcm"]

    # resend: the parked delivery is queued again and, this time, delivered.
    msg = pipeline.resend(job_id)
    assert msg == f"job {job_id}: 1 delivery(ies) queued again"
    assert dispatcher.deliveries[-1] == (did, 0.0)
    d = store.delivery(did)
    assert (d.state, d.attempts) == ("pending", 0)
    assert store.job(job_id).state == JobState.DELIVERING.value
    pipeline.deliver(did)
    d = store.delivery(did)
    assert (d.state, d.attempts, d.last_status) == ("delivered", 1, "0x0000")
    assert store.job(job_id).state == JobState.DONE.value


def test_rejection_is_permanent_at_once(
    pipeline: Pipeline,
    store: Store,
    dispatcher: RecordingDispatcher,
    tmp_path: Path,
    sender: FakeSender,
) -> None:
    job_id, did = delivering_job(store, tmp_path)
    sender.errors = [DeliveryRejected("TPS answered 0xC000")]
    pipeline.deliver(did)
    d = store.delivery(did)
    assert (d.state, d.attempts, d.last_status) == ("failed", 1, "TPS answered 0xC000")
    assert dispatcher.deliveries == []
    assert store.job(job_id).state == JobState.FAILED.value


def test_unexpected_library_error_is_retried(
    pipeline: Pipeline,
    store: Store,
    dispatcher: RecordingDispatcher,
    tmp_path: Path,
    sender: FakeSender,
) -> None:
    _, did = delivering_job(store, tmp_path)
    sender.errors = [RuntimeError("socket gone")]
    pipeline.deliver(did)
    d = store.delivery(did)
    assert (d.state, d.last_status) == ("pending", "unexpected RuntimeError")
    assert len(dispatcher.deliveries) == 1


def test_resend_of_a_job_without_complete_inputs_is_refused(
    pipeline: Pipeline, store: Store
) -> None:
    job = store.create_job(STUDY, "mr", ["pelvis"], T0)
    store.update_job(job.id, state=JobState.FAILED, reason="not ready")
    with pytest.raises(Exception, match="never had complete inputs"):
        pipeline.resend(job.id)
    with pytest.raises(KeyError):
        pipeline.resend(9999)


def test_deliveries_to_one_destination_go_in_order_of_arrival(
    pipeline: Pipeline,
    store: Store,
    dispatcher: RecordingDispatcher,
    clock: Clock,
    tmp_path: Path,
    sender: FakeSender,
) -> None:
    first_job, first = delivering_job(store, tmp_path)
    _, second = delivering_job(store, tmp_path)
    _, third = delivering_job(store, tmp_path)
    sender.errors = [PeerUnavailable("down")]
    fake = sender

    pipeline.deliver(second)  # its RTSTRUCT was ready first, but an older job's is pending
    pipeline.deliver(first)  # the destination is down: retry later
    pipeline.deliver(third)
    assert len(fake.calls) == 1
    assert [(d.state, d.attempts) for d in map(store.delivery, (first, second, third))] == [
        ("pending", 1),
        ("pending", 0),
        ("pending", 0),
    ]
    clock.t = store.delivery(first).next_attempt_at
    dispatcher.deliveries.clear()
    pipeline.deliver(first)  # back up: delivered, and the next in line is handed on
    assert dispatcher.deliveries == [(second, 0.0)]
    pipeline.deliver(second)
    assert dispatcher.deliveries[-1] == (third, 0.0)
    pipeline.deliver(third)
    assert [d.state for d in map(store.delivery, (first, second, third))] == ["delivered"] * 3
    assert len(fake.calls) == 4
    audit = [(r["event"], r["outcome"], r["job_id"]) for r in store.audit_rows()]
    assert audit[0] == ("delivery", "delivered", first_job)
    assert ("job", "done", first_job) in audit


def test_retention_purges_only_old_fully_delivered_studies(tmp_path: Path, store: Store) -> None:
    from gateway.config import StorageConfig
    from gateway.retention import DAY_S, purge

    spool = tmp_path / "spool"
    studies = {}
    for name in ("delivered", "failed", "recent", "unrouted"):
        uid = f"1.2.826.0.1.3680043.8.498.{len(studies) + 10}"
        f = spool / uid / "1.2" / "1.2.3.dcm"
        f.parent.mkdir(parents=True)
        f.write_bytes(b"x")
        age = 1 * DAY_S if name == "recent" else 40 * DAY_S
        store.record_instance(
            InstanceRecord(
                uid, f"{uid}.1", f"{uid}.1.1", "1.2.840.10008.5.1.4.1.1.4", str(f), {}, {}
            ),
            calling_ae="S",
            called_ae="A",
            now=T0 - age,
        )
        studies[name] = uid
        if name == "unrouted":
            continue
        job = store.create_job(uid, "mr", "pelvis", T0 - age)
        [d] = store.create_deliveries(job.id, ["planning"])
        ok = name != "failed"
        store.update_delivery(d, state=DeliveryState.DELIVERED if ok else DeliveryState.FAILED)
        store.update_job(job.id, state=JobState.DONE if ok else JobState.FAILED)

    report = purge(store, StorageConfig(retention_days=30), (spool,), now=T0)
    assert report.studies == 2
    left = {p.name for p in spool.iterdir()}
    assert left == {studies["failed"], studies["recent"]}  # undelivered and recent are kept
    assert store.study(studies["delivered"]) is None and store.study(studies["failed"])


def test_a_paused_destination_gets_nothing_its_deliveries_wait_uncounted_then_go_on_resume(
    pipeline: Pipeline,
    store: Store,
    dispatcher: RecordingDispatcher,
    clock: Clock,
    tmp_path: Path,
    sender: FakeSender,
) -> None:
    first_job, first = delivering_job(store, tmp_path)
    _, second = delivering_job(store, tmp_path)
    sender.errors = [PeerUnavailable("down")]
    pipeline.deliver(first)  # one failed attempt before the pause: it stays counted
    assert pipeline.pause_destination("planning", by="J. Physicist") == (
        "destination planning paused: 2 delivery(ies) wait"
    )
    clock.t = store.delivery(first).next_attempt_at
    dispatcher.deliveries.clear()
    for _ in range(5):  # longer than max_attempts (3): a pause never parks a delivery
        pipeline.deliver(first)
        pipeline.deliver(second)
        assert [(d.state, d.attempts) for d in map(store.delivery, (first, second))] == [
            ("pending", 1),
            ("pending", 0),
        ]
        # looked at again after min(echo interval, 30 s), not sooner
        assert store.delivery(first).next_attempt_at == pytest.approx(clock.t + 30.0)
        assert dispatcher.deliveries[-2:] == [(first, 30.0), (second, 30.0)]
        clock.t += 30.0
    assert len(sender.calls) == 1
    assert store.waiting_deliveries() == {"planning": 2}
    assert store.job(first_job).state == JobState.DELIVERING.value

    clock.t += 10.0  # resumed between two looks: due at once, not at the next look
    dispatcher.deliveries.clear()
    assert pipeline.resume_destination("planning", by="J. Physicist") == (
        "destination planning resumed: 2 delivery(ies) queued"
    )
    assert dispatcher.deliveries == [(first, 0.0), (second, 0.0)]
    pipeline.deliver(first)
    pipeline.deliver(second)
    assert [(d.state, d.attempts) for d in map(store.delivery, (first, second))] == [
        ("delivered", 2),
        ("delivered", 1),
    ]
    assert store.waiting_deliveries() == {}
    audit = [(r["event"], r["outcome"], r["destination"], r["detail"]) for r in store.audit_rows()]
    assert ("destination", "paused", "planning", "by J. Physicist") in audit
    assert ("destination", "resumed", "planning", "by J. Physicist") in audit
    with pytest.raises(KeyError):
        pipeline.pause_destination("nowhere", by="J. Physicist")


def test_a_lost_c_store_response_is_retried_with_the_same_structure_set(
    pipeline: Pipeline,
    store: Store,
    dispatcher: RecordingDispatcher,
    clock: Clock,
    tmp_path: Path,
    sender: FakeSender,
) -> None:
    from gateway.dicom.cstore import LostResponse

    job_id, did = delivering_job(store, tmp_path)
    rt = tmp_path / "rtstruct.dcm"
    before = rt.read_bytes()
    sender.errors = [LostResponse("TPS: no C-STORE response (connection lost?)", 0)]
    pipeline.deliver(did)
    d = store.delivery(did)
    assert (d.state, d.attempts) == ("pending", 1)
    clock.t = d.next_attempt_at
    pipeline.deliver(did)
    assert store.delivery(did).state == DeliveryState.DELIVERED.value
    assert store.job(job_id).state == JobState.DONE.value
    # Both attempts sent the one file built for the job: the peer may hold it once or have it
    # replaced by the same SOP Instance, never a second structure set.
    assert [c[2] for c in sender.calls] == [[rt], [rt]]
    assert rt.read_bytes() == before
    assert store.job(job_id).rtstruct_path == str(rt)
