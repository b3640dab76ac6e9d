"""The pipeline: the thin sequencer of a study's stages.

    check_study  route -> assemble: open a job, wait for its inputs, queue it (or fail it)
    run_job      volumes -> models -> RTSTRUCT -> deliveries (gateway.segment.runner, contour)
    deliver      gateway.deliver.delivery: C-STORE, backoff, order per destination, parking

The database is the durable truth and guards every claim (``gateway.db.work``); a
:class:`Dispatcher` (the task queue) only says *when* a step runs next, and the
:class:`~gateway.scheduler.Scheduler` of every process picks up what the queue did not bring:
due study checks, work queued by another process, and jobs whose owner died.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from gateway.config import GatewayConfig
from gateway.db.database import Store
from gateway.db.records import TERMINAL, DeliveryState, JobState, StudyInfo
from gateway.deliver.delivery import Deliverer, Sender
from gateway.errors import PermanentError
from gateway.failpoints import CrashPoints
from gateway.inference import JobRunner
from gateway.job import JobPlan, ModelPlan
from gateway.scheduler import new_owner
from gateway.study import assembly, routing

log = logging.getLogger(__name__)

# How long a delivery to a paused destination waits before it is looked at again, at most: a
# resume also makes them due at once, this only bounds a resume made outside this code.
PAUSED_RECHECK_MAX_S = 30.0


class Dispatcher(Protocol):
    """Where the pipeline hands its next steps (the task queue, or inline in tests)."""

    def run_job(self, job_id: int) -> None: ...
    def deliver(self, delivery_id: int, delay: float = 0.0) -> None: ...
    def compare(self, structure_set_uid: str) -> None: ...


class Pipeline:
    def __init__(
        self,
        cfg: GatewayConfig,
        store: Store,
        dispatcher: Dispatcher,
        segmenters: Any = None,
        clock: Callable[[], float] = time.time,
        crash: CrashPoints | None = None,
        sender: Sender | None = None,
        owner: str = "",
    ):
        self.cfg = cfg
        self.store = store
        self.dispatch = dispatcher
        self.clock = clock
        self.crash = crash or CrashPoints()
        # Every claim carries an owner: a lease without one would be taken back at once.
        self.owner = owner = owner or new_owner()
        if segmenters is None:
            from gateway.segment import SegmenterCache

            segmenters = SegmenterCache(cfg.segmentation)
        self.segmenters = segmenters
        if sender is None:
            from gateway.dicom import scu

            sender = scu.store
        self.runner = JobRunner(
            cfg, store, segmenters, dispatcher, owner=owner, clock=clock, crash=self.crash
        )
        self.delivery = Deliverer(
            store,
            dict(cfg.destinations),
            cfg.delivery,
            cfg.ae_title,
            dispatcher,
            sender,
            owner=owner,
            lease_s=cfg.queue.lease_s,
            paused_recheck_s=min(cfg.monitor.echo_interval_s, PAUSED_RECHECK_MAX_S),
            clock=clock,
            crash=self.crash,
        )

    # -- assemble ------------------------------------------------------------------------------

    def check_study(self, study_uid: str) -> None:
        """Decide a study's job; the study's next check is written to ``recheck_at``."""
        now = self.clock()
        study = self.store.study(study_uid)
        if study is None:
            return
        if study.open_associations:
            # Never ready while being sent: the association's end asks for the next check.
            self.store.set_study_reason(study_uid, "being received")
            return
        study = _without_our_images(study, self.store.images_made(study_uid))
        rule = routing.route(self.cfg.rules, study)
        if rule is None:
            why = "no rule matches: " + routing.explain(self.cfg.rules, study)
            if self.store.set_study_reason(study_uid, why):
                log.info("study %s: %s; kept, not processed", study_uid, why)
            return
        self.store.set_study_reason(study_uid, "")
        jobs = self.store.jobs_for(study_uid, rule.name)
        last = jobs[-1] if jobs else None
        if last is not None and last.state != JobState.WAITING.value:
            if last.state not in TERMINAL:
                return  # busy with earlier input: settling it asks for the next check
            # The job's inputs were fixed when it became ready (or failed waiting); only an
            # instance received after that is new. A cancelled job is the operator's decision
            # on what had arrived by then: the study is not routed again unless sent again.
            decided = last.stages.get("ready", last.stages.get("failed", last.created_at))
            if last.state == JobState.CANCELLED.value:
                decided = max(decided, last.stages.get("cancelled", decided))
            if decided >= study.last_received_at:
                return
            last = None
        job = last or self.store.create_job(study_uid, rule.name, rule.models, now)
        models = [self.cfg.models[m] for m in rule.models]
        decision = assembly.decide_rule(
            models, study, opened_at=job.created_at, now=now, cfg=self.cfg.assembly
        )
        if decision.waiting is not None:
            self.store.update_job(job.id, reason=decision.waiting.reason)
            self.store.schedule_check(study_uid, decision.waiting.recheck_at)
            return
        refused = "; ".join(f"{m}: {r}" for m, r in decision.failed.items())
        if not decision.ready:
            log.warning("job %d study %s failed: %s", job.id, study_uid, refused)
            self.store.fail_job(job.id, refused, now)
            return
        plan = JobPlan(
            models={
                m: ModelPlan(series=tuple(s.key for s in decision.ready[m].series))
                if m in decision.ready
                else ModelPlan(refused=decision.failed[m])
                for m in rule.models
            }
        )
        stages = {"ready": now, **_received(study, plan.series_used)}
        if not self.store.mark_ready(job.id, plan, stages, refused):
            return  # another process queued it
        log.info(
            "job %d study %s: inputs complete, queued for %s%s",
            job.id,
            study_uid,
            ", ".join(plan.runnable),
            f" (not run: {', '.join(decision.failed)})" if decision.failed else "",
        )
        self.crash.hit("job.queued")
        self.dispatch.run_job(job.id)

    # -- segment + RTSTRUCT ----------------------------------------------------------------------

    def run_job(self, job_id: int) -> None:
        self.runner.run(job_id)

    # -- clinical QA ---------------------------------------------------------------------------

    def compare(self, structure_set_uid: str) -> None:
        """An approved structure set came back: pair it and compare it (gateway.qa)."""
        self._qa().compare(structure_set_uid)

    def _qa(self) -> Any:
        from gateway.qa.loop import QaLoop

        return QaLoop(self.cfg, self.store, owner=self.owner, clock=self.clock)

    # -- send ----------------------------------------------------------------------------------

    def deliver(self, delivery_id: int) -> None:
        self.delivery.deliver(delivery_id)

    # -- operations ----------------------------------------------------------------------------

    def resend(self, job_id: int) -> str:
        """Retry a finished job: its deliveries, or the whole job if it made no RTSTRUCT.

        A cancelled job is taken up again the same way: its structure set, if it made one, goes
        to the rule's destinations; otherwise it runs again from its inputs (one that was
        cancelled before its inputs were complete cannot: the study must be sent again)."""
        job = self.store.job(job_id)
        if job is None:
            raise KeyError(job_id)
        if job.state in (JobState.WAITING.value, JobState.QUEUED.value, JobState.RUNNING.value):
            raise PermanentError(f"job {job_id} is {job.state}: nothing to resend until it ends")
        cancelled = job.state == JobState.CANCELLED.value
        if cancelled and job.lease_owner and (job.lease_expires_at or 0.0) > self.clock():
            raise PermanentError(
                f"job {job_id} was cancelled while running and has not stopped yet; "
                "resend it once it has"
            )
        if job.rtstruct_path and Path(job.rtstruct_path).is_file():
            if cancelled:  # cancelled while it ran, it may have opened no delivery
                rule = next((r for r in self.cfg.rules if r.name == job.rule), None)
                if rule is None:
                    raise PermanentError(f"job {job_id}: rule {job.rule} is no longer configured")
                self.store.create_deliveries(job_id, rule.destinations)
            ids = self.delivery.requeue(job_id, self.clock())
            self.store.update_job(job_id, state=JobState.DELIVERING, reason="resend requested")
            for i in ids:
                self.dispatch.deliver(i)
            return f"job {job_id}: {len(ids)} delivery(ies) queued again"
        if not job.input_series:
            raise PermanentError(f"job {job_id} never had complete inputs; send the study again")
        self.store.update_job(job_id, state=JobState.QUEUED, reason="resend requested")
        self.dispatch.run_job(job_id)
        return f"job {job_id}: queued to run again"

    def pause_destination(self, name: str, by: str) -> str:
        """Stop deliveries to a configured destination (audited with ``by``); what is being
        sent now finishes, the rest waits. Raises KeyError for an unknown destination."""
        if name not in self.cfg.destinations:
            raise KeyError(name)
        self.store.set_paused(name, True, by, self.clock())
        log.warning("destination %s paused by %s", name, by)
        waiting = self.store.waiting_deliveries().get(name, 0)
        return f"destination {name} paused: {waiting} delivery(ies) wait"

    def resume_destination(self, name: str, by: str) -> str:
        """Deliver to a paused destination again (audited with ``by``): its waiting
        deliveries are due now. Raises KeyError for an unknown destination."""
        if name not in self.cfg.destinations:
            raise KeyError(name)
        self.store.set_paused(name, False, by, self.clock())
        ids = self.delivery.release(name)
        log.info("destination %s resumed by %s: %d delivery(ies) due", name, by, len(ids))
        return f"destination {name} resumed: {len(ids)} delivery(ies) queued"

    def cancel(self, job_id: int, by: str) -> str:
        """Cancel a job for the operator ``by`` (audited): waiting, queued, failed, or with
        deliveries pending or parked. A job running now stops at its next stage and delivers
        nothing. It is never claimed, recovered or routed again by itself; :meth:`resend`
        takes it up again. Raises KeyError for an unknown job, PermanentError for one that is
        done (everything delivered) or already cancelled."""
        was = self.store.cancel_job(job_id, by, self.clock())
        log.info("job %d cancelled by %s (was %s)", job_id, by, was)
        if was == JobState.RUNNING.value:
            return f"job {job_id}: cancelled; it is running and stops at its next stage"
        return f"job {job_id}: cancelled (was {was})"

    def recover(self, receiving: bool = True) -> None:
        """After a (re)start: take back work whose owner died, re-dispatch what is queued, and
        (in the receiving process) treat studies that were being sent as interrupted."""
        from gateway.scheduler import owner_is_dead

        now = self.clock()
        jobs, deliveries = self.store.reclaim(now, owner_is_dead)
        if jobs or deliveries:
            log.warning(
                "took back %d job(s) and %d delivery(ies) whose process had stopped",
                len(jobs),
                len(deliveries),
            )
        for job in self.store.jobs_in(JobState.QUEUED):
            self.dispatch.run_job(job.id)
        for job in self.store.jobs_in(JobState.DELIVERING):
            for d in self.store.deliveries_for(job.id):
                if d.state == DeliveryState.PENDING.value:
                    self.dispatch.deliver(d.id, delay=max(0.0, d.next_attempt_at - now))
            self.store.settle_job(job.id, now)
        if receiving:
            cut = self.store.mark_unfinished_receptions(now)
            if cut:
                log.warning(
                    "%d study(ies) were being received when the gateway stopped: waiting up to "
                    "%g s for their senders to resume",
                    len(cut),
                    self.cfg.assembly.interrupted_wait_s,
                )
        self.store.schedule_open_work(now)
        self.store.reclaim_structure_sets(now, owner_is_dead)
        try:  # a process that died between a comparison and its charts loses no alarm
            self._qa().evaluate()
        except Exception:
            log.exception("QA control charts could not be evaluated at start")


def _without_our_images(study: StudyInfo, ours: set[str]) -> StudyInfo:
    """The study less the series of images this gateway made (a classic copy a PACS forwarded
    back): never routed, and their arrival is not new input for a job."""
    if not ours:
        return study
    kept = tuple(s for s in study.series if not (s.paths and set(s.paths) <= ours))
    if len(kept) == len(study.series):
        return study
    last = max((s.received[1] for s in kept), default=study.first_received_at)
    return dataclasses.replace(study, series=kept, last_received_at=last)


def _received(study: StudyInfo, series_uids: list[str]) -> dict[str, float]:
    """When the instances a job's inputs hold arrived: first and last (its 'receive' stage)."""
    spans = [s.received for s in study.series if s.key in series_uids]
    if not spans:
        return {}
    return {
        "received_first": min(a for a, _ in spans),
        "received_last": max(b for _, b in spans),
    }
