"""A job run through the Store's own transitions, as the pipeline calls them (open, ready,
claimed, volume, segment, RTSTRUCT built, each delivery claimed and finished), with chosen
times: the rows and audit rows a real run leaves, without models or peers."""

from __future__ import annotations

from collections.abc import Mapping

from gateway.db.database import Store
from gateway.db.records import DeliveryState
from gateway.job import JobOutcome, JobPlan, ModelOutcome, ModelPlan, ModelState, Provenance

# Seconds from the last instance received to each stage's end, for every job run here.
RECEIVE_S = 4.0
ASSEMBLE_S = 12.0
QUEUE_S = 0.5
VOLUME_S = 1.5
SEGMENT_S = 7.0
RTSTRUCT_S = 0.3
SEND_S = 2.0
MODEL_SEGMENT_S = 6.0  # each model's own run (ModelOutcome.segment_s)
MODEL_WAIT_S = 1.0


def run_job(
    store: Store,
    study_uid: str,
    rule: str,
    models: tuple[str, ...],
    deliveries: Mapping[str, DeliveryState],
    t0: float,
    series_uid: str = "1.2.826.0.1.3680043.8.498.7",
) -> int:
    """Run a job of ``rule`` on ``study_uid`` whose last instance came at ``t0``; each
    destination's delivery ends as given (DELIVERED, or FAILED: parked). Returns the job id."""
    job = store.create_job(study_uid, rule, models, now=t0 - RECEIVE_S)
    plan = JobPlan(models={m: ModelPlan(series=(series_uid,)) for m in models})
    ready = t0 + ASSEMBLE_S
    assert store.mark_ready(
        job.id, plan, {"received_first": t0 - RECEIVE_S, "received_last": t0, "ready": ready}, ""
    )
    started = ready + QUEUE_S
    assert store.claim_job(job.id, "test:1:x", now=started, lease_s=60)
    store.update_job(job.id, stage="volume", now=started + VOLUME_S)
    segment = started + VOLUME_S + SEGMENT_S
    store.update_job(job.id, stage="segment", now=segment)
    outcome = JobOutcome(
        models={
            m: ModelOutcome(
                state=ModelState.DONE,
                provenance=Provenance(m, "1", "ab" * 32),
                input_series=(series_uid,),
                volume_s=VOLUME_S,
                wait_s=MODEL_WAIT_S,
                segment_s=MODEL_SEGMENT_S,
            )
            for m in models
        }
    )
    built = segment + RTSTRUCT_S
    ids = store.finish_run(
        job.id, outcome, "1.2.826.0.1.3680043.8.498.9", "/out/x.dcm", list(deliveries), built
    )
    for delivery_id, state in zip(ids, deliveries.values(), strict=True):
        assert store.claim_delivery(delivery_id, now=built, owner="test:1:x")
        outcome_word = "delivered" if state is DeliveryState.DELIVERED else "parked"
        status = "0x0000" if state is DeliveryState.DELIVERED else "0xA700"
        store.finish_delivery(delivery_id, state, 1, status, outcome_word, built + SEND_S)
    return job.id
