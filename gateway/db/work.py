"""Jobs and deliveries: the claims that guard them, their leases, and the readiness timer.

The database, not a process lock, decides who does what. Every transition is one conditional
UPDATE (or one transaction), so two processes that try the same step do it once:

* a study's next check is ``studies.recheck_at``; a checker takes it by clearing it from the
  value it saw (:meth:`claim_recheck`);
* at most one unfinished job per study and rule (a partial unique index);
  :meth:`create_job` returns the open one when another process made it first;
* a job runs under a lease (owner, expiry) that its owner renews while it works; a job whose
  lease expired, or whose owner is a dead process on this host, is queued again by
  :meth:`reclaim` in any process. Deliveries being sent hold leases the same way.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from gateway.db.records import TERMINAL, DeliveryState, JobState, StructureSetState
from gateway.db.tables import (
    AuditRow,
    DeliveryRow,
    JobRow,
    SelfTestRow,
    StructureSetRow,
    StudyRow,
)
from gateway.job import JobOutcome, JobPlan, stage_timings

UNFINISHED_DELIVERY = (DeliveryState.PENDING.value, DeliveryState.SENDING.value)


class WorkQueries:
    """Job and delivery queries of :class:`gateway.db.database.Store` (a mixin)."""

    session: Callable[..., AbstractContextManager[Session]]

    # -- jobs -------------------------------------------------------------------------------------

    def jobs_for(self, study_uid: str, rule: str) -> list[JobRow]:
        with self.session() as s:
            return list(
                s.scalars(
                    select(JobRow)
                    .where(JobRow.study_uid == study_uid, JobRow.rule == rule)
                    .order_by(JobRow.id)
                )
            )

    def jobs_of_study(self, study_uid: str) -> list[JobRow]:
        with self.session() as s:
            query = select(JobRow).where(JobRow.study_uid == study_uid).order_by(JobRow.id)
            return list(s.scalars(query))

    def images_made(self, study_uid: str) -> set[str]:
        """SOP Instance UIDs of the images this gateway made for a study's jobs (the classic
        copy of a multi-frame primary): were they sent back to us, they are not new input."""
        return {
            a.uid
            for job in self.jobs_of_study(study_uid)
            for a in job.job_outcome.artifacts
            if a.kind == "image"
        }

    def create_job(self, study_uid: str, rule: str, models: Sequence[str], now: float) -> JobRow:
        """Open a job waiting for its inputs, or return the unfinished one for this study and
        rule (another process may have opened it a moment ago)."""
        try:
            with self.session() as s:
                job = JobRow(
                    study_uid=study_uid,
                    rule=rule,
                    models=list(models),
                    state=JobState.WAITING.value,
                    reason="waiting for inputs",
                    input_series=[],
                    created_at=now,
                    stages={"created": now},
                    plan={},
                    outcome={},
                    attempts=0,
                )
                s.add(job)
                s.flush()
                return job
        except IntegrityError:
            with self.session() as s:
                existing = s.scalar(
                    select(JobRow).where(
                        JobRow.study_uid == study_uid,
                        JobRow.rule == rule,
                        JobRow.state.not_in([st.value for st in TERMINAL]),
                    )
                )
            if existing is None:  # it finished in between: try once more
                return self.create_job(study_uid, rule, models, now)
            return existing

    def job(self, job_id: int) -> JobRow | None:
        with self.session() as s:
            return s.get(JobRow, job_id)

    def list_jobs(self, limit: int = 100) -> list[JobRow]:
        with self.session() as s:
            return list(s.scalars(select(JobRow).order_by(JobRow.id.desc()).limit(limit)))

    def jobs_in(self, *states: JobState) -> list[JobRow]:
        with self.session() as s:
            return list(
                s.scalars(
                    select(JobRow)
                    .where(JobRow.state.in_([st.value for st in states]))
                    .order_by(JobRow.id)
                )
            )

    def update_job(
        self,
        job_id: int,
        *,
        state: JobState | None = None,
        reason: str | None = None,
        stage: str | None = None,
        now: float | None = None,
        **fields: Any,
    ) -> JobRow:
        """Update a job; ``stage`` records ``now`` as that stage's timestamp."""
        with self.session() as s:
            job = s.get(JobRow, job_id)
            if job is None:
                raise KeyError(job_id)
            _apply(job, state, reason, stage, now, fields)
            s.flush()
            return job

    def mark_ready(self, job_id: int, plan: JobPlan, stages: dict[str, float], reason: str) -> bool:
        """WAITING -> QUEUED with its plan; False if another process did it first."""
        with self.session() as s:
            job = s.get(JobRow, job_id)
            if job is None or job.state != JobState.WAITING.value:
                return False
            res = s.execute(
                update(JobRow)
                .where(JobRow.id == job_id, JobRow.state == JobState.WAITING.value)
                .values(
                    state=JobState.QUEUED.value,
                    reason=reason,
                    plan=plan.model_dump(mode="json"),
                    input_series=plan.series_used,
                    stages={**job.stages, **stages},
                )
            )
            return bool(res.rowcount)  # type: ignore[attr-defined]

    def claim_job(self, job_id: int, owner: str, now: float, lease_s: float) -> bool:
        """QUEUED -> RUNNING under a lease held by ``owner``; False if not queued.

        On PostgreSQL the row is locked first (``FOR UPDATE SKIP LOCKED``): a worker whose
        duplicate task reaches a job another worker is claiming moves on at once instead of
        waiting for that transaction; the conditional UPDATE decides on both databases."""
        with self.session() as s:
            free = s.scalar(
                select(JobRow.id)
                .where(JobRow.id == job_id, JobRow.state == JobState.QUEUED.value)
                .with_for_update(skip_locked=True)
            )
            if free is None:
                return False
            res = s.execute(
                update(JobRow)
                .where(JobRow.id == job_id, JobRow.state == JobState.QUEUED.value)
                .values(
                    state=JobState.RUNNING.value,
                    lease_owner=owner,
                    lease_expires_at=now + lease_s,
                    attempts=JobRow.attempts + 1,
                )
            )
            if not res.rowcount:  # type: ignore[attr-defined]
                return False
            job = s.get(JobRow, job_id)
            assert job is not None
            # A run's stages are its own: a job run again records them again.
            kept = {k: v for k, v in job.stages.items() if k not in _RUN_STAGES}
            job.stages = {**kept, "started": now}
            return True

    def finish_run(
        self,
        job_id: int,
        outcome: JobOutcome,
        rtstruct_uid: str,
        rtstruct_path: str,
        destinations: Sequence[str],
        now: float,
        preview_path: str | None = None,
    ) -> list[int] | None:
        """The structure set is built: record it (and its preview), open its deliveries and
        release the lease, in one transaction; return the delivery ids. A job cancelled while
        it ran keeps its state: the structure set is recorded (a resend may deliver it),
        nothing is opened, and None is returned.

        A self-test's study (a ``self_tests`` row with its UID) goes only to the destination the
        operator chose instead of the rule's ``destinations``; a dry run to none: the job is
        done at once ("dry run: not sent")."""
        with self.session() as s:
            job = s.get(JobRow, job_id)
            assert job is not None
            fields: dict[str, Any] = {
                "outcome": outcome.model_dump(mode="json"),
                "rtstruct_uid": rtstruct_uid,
                "rtstruct_path": rtstruct_path,
                "preview_path": preview_path,
                "lease_owner": None,
                "lease_expires_at": None,
            }
            if job.state == JobState.CANCELLED.value:
                _apply(job, None, None, "rtstruct", now, fields)
                return None
            self_test = self_test_destinations(s, job.study_uid)
            if self_test is not None:
                destinations = self_test
                if not destinations:
                    reason = "; ".join(r for r in ("dry run: not sent", outcome.partial) if r)
                    _apply(job, JobState.DONE, reason, "rtstruct", now, fields)
                    _audit_job(s, job, "done", reason, now)
                    recheck_by(s, job.study_uid, now)
                    return []
            _apply(job, JobState.DELIVERING, outcome.partial, "rtstruct", now, fields)
            return open_deliveries(s, job_id, destinations)

    def fail_job(
        self, job_id: int, reason: str, now: float, outcome: JobOutcome | None = None
    ) -> JobRow:
        """The job failed: state, reason, stage, the audit row and the study's next check (new
        instances may have come meanwhile), in one transaction."""
        fields: dict[str, Any] = {"lease_owner": None, "lease_expires_at": None}
        if outcome is not None:
            fields["outcome"] = outcome.model_dump(mode="json")
        with self.session() as s:
            job = s.get(JobRow, job_id)
            if job is None:
                raise KeyError(job_id)
            if job.state == JobState.CANCELLED.value:  # cancelled while it ran: it stays so
                _apply(job, None, None, None, now, fields)
                return job
            _apply(job, JobState.FAILED, reason, "failed", now, fields)
            _audit_job(s, job, "failed", reason, now)
            recheck_by(s, job.study_uid, now)
            return job

    def renew_leases(self, owner: str, now: float, lease_s: float) -> None:
        with self.session() as s:
            for table, state in (
                (JobRow, JobState.RUNNING),
                (DeliveryRow, DeliveryState.SENDING),
                (StructureSetRow, StructureSetState.COMPARING),
            ):
                s.execute(
                    update(table)
                    .where(table.lease_owner == owner, table.state == state.value)
                    .values(lease_expires_at=now + lease_s)
                )

    def reclaim(self, now: float, is_dead: Callable[[str], bool]) -> tuple[list[int], list[int]]:
        """Queue again the jobs and deliveries whose lease expired or whose owner died; return
        their ids (jobs, deliveries)."""
        with self.session() as s:
            jobs = _reclaim(s, JobRow, JobState.RUNNING, JobState.QUEUED, now, is_dead)
            deliveries = _reclaim(
                s, DeliveryRow, DeliveryState.SENDING, DeliveryState.PENDING, now, is_dead
            )
        return jobs, deliveries


def _reclaim(
    s: Session,
    table: Any,
    busy: enum.Enum,
    back: enum.Enum,
    now: float,
    is_dead: Callable[[str], bool],
    key: Any = None,
) -> list[Any]:
    """Rows of ``table`` in ``busy`` whose lease expired or whose owner died, put back to
    ``back`` (their ``key`` column: ``table.id`` unless given)."""
    key = table.id if key is None else key
    taken = []
    # Rows another process is giving back right now are skipped (PostgreSQL row locks; SQLite
    # serialises writers anyway): each is given back once.
    rows = s.execute(
        select(key, table.lease_owner, table.lease_expires_at)
        .where(table.state == busy.value)
        .with_for_update(skip_locked=True)
    ).all()
    for row_id, owner, expires in rows:
        if owner and expires is not None and expires >= now and not is_dead(owner):
            continue
        same_owner = table.lease_owner == owner if owner else table.lease_owner.is_(None)
        res = s.execute(
            update(table)
            .where(key == row_id, table.state == busy.value, same_owner)
            .values(state=back.value, lease_owner=None, lease_expires_at=None)
        )
        if res.rowcount:  # type: ignore[attr-defined]
            taken.append(row_id)
    return taken


_RUN_STAGES = ("started", "volume", "segment", "rtstruct", "delivered", "failed", "cancelled")


def _apply(
    job: JobRow,
    state: JobState | None,
    reason: str | None,
    stage: str | None,
    now: float | None,
    fields: dict[str, Any],
) -> None:
    if state is not None:
        job.state = state.value
    if reason is not None:
        job.reason = reason
    if stage is not None:
        job.stages = {**job.stages, stage: time.time() if now is None else now}
    for k, v in fields.items():
        setattr(job, k, v)


def self_test_destinations(s: Session, study_uid: str) -> list[str] | None:
    """Where a self-test's job delivers: only the destination the operator chose, or nowhere
    (a dry run); None when the study is not a self-test."""
    row = s.scalar(select(SelfTestRow).where(SelfTestRow.study_uid == study_uid))
    if row is None:
        return None
    return [row.destination] if row.destination else []


def open_deliveries(s: Session, job_id: int, destinations: Sequence[str]) -> list[int]:
    """A pending delivery per destination (the existing one where the job has it); ids."""
    existing = {
        d.destination: d.id
        for d in s.scalars(select(DeliveryRow).where(DeliveryRow.job_id == job_id))
    }
    for dest in destinations:
        if dest not in existing:
            row = DeliveryRow(
                job_id=job_id,
                destination=dest,
                state=DeliveryState.PENDING.value,
                attempts=0,
                next_attempt_at=0.0,
                last_status="",
            )
            s.add(row)
            s.flush()
            existing[dest] = row.id
    return [existing[d] for d in destinations]


def recheck_by(s: Session, study_uid: str, at: float) -> None:
    """The study's next check at ``at`` or earlier (an earlier pending check is kept)."""
    s.execute(
        update(StudyRow)
        .where(
            StudyRow.study_uid == study_uid,
            or_(StudyRow.recheck_at.is_(None), StudyRow.recheck_at > at),
        )
        .values(recheck_at=at)
    )


def _settle(s: Session, job: JobRow, now: float) -> None:
    """Settle a delivering job whose deliveries are all over: done, or failed with why."""
    if job.state != JobState.DELIVERING.value:
        return
    deliveries = list(s.scalars(select(DeliveryRow).where(DeliveryRow.job_id == job.id)))
    states = {d.state for d in deliveries}
    if states & set(UNFINISHED_DELIVERY):
        return
    if states == {DeliveryState.DELIVERED.value}:
        partial = job.job_outcome.partial
        _apply(job, JobState.DONE, partial, "delivered", now, {})
        _audit_job(s, job, "done", partial, now)
    else:
        failed = [
            f"{d.destination}: {d.last_status}"
            for d in deliveries
            if d.state == DeliveryState.FAILED.value
        ]
        reason = "delivery failed: " + "; ".join(failed)
        _apply(job, JobState.FAILED, reason, "failed", now, {})
        _audit_job(s, job, "failed", reason, now)
    recheck_by(s, job.study_uid, now)


def _audit_job(s: Session, job: JobRow, outcome: str, detail: str, now: float) -> None:
    ran = job.job_outcome.ran
    _audit(
        s,
        "job",
        outcome,
        now,
        study_uid=job.study_uid,
        job_id=job.id,
        instances=0,
        series_uid=",".join(job.input_series)[:64],
        model=", ".join(p.label for p in ran) or ", ".join(job.models),
        detail=f"rule {job.rule}" + (f": {detail}" if detail else ""),
    )


def _audit(s: Session, event: str, outcome: str, now: float, **fields: Any) -> None:
    row = AuditRow(at=now, event=event, outcome=outcome)
    for key, value in fields.items():
        setattr(row, key, value if value is not None or key == "job_id" else "")
    s.add(row)


def timings(job: JobRow) -> dict[str, float]:
    """Seconds per stage of a job (see :func:`gateway.job.stage_timings`)."""
    return stage_timings(dict(job.stages), job.job_outcome)
