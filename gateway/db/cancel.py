"""Cancelling a job (the operator's decision): the job and its undelivered deliveries, in
one conditional transaction; a running job is left to its worker, which stops at its next
stage."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

from sqlalchemy import update
from sqlalchemy.orm import Session

from gateway.db.records import DeliveryState, JobState
from gateway.db.tables import DeliveryRow, JobRow
from gateway.db.work import _audit_job
from gateway.errors import PermanentError


class CancelQueries:
    """Cancel queries of :class:`gateway.db.database.Store` (a mixin)."""

    session: Callable[..., AbstractContextManager[Session]]

    def cancel_job(self, job_id: int, by: str, now: float) -> str:
        """Cancel a job that is not done (audited with ``by``): its undelivered deliveries are
        cancelled with it; a job running now is left to its worker, which stops at its next
        stage and delivers nothing. Returns the state it was in. Raises KeyError for an unknown
        job, PermanentError for one done (everything delivered) or already cancelled."""
        for _ in range(5):  # the job may move on between the read and the conditional write
            with self.session() as s:
                was = _cancel(s, job_id, by, now)
            if was is not None:
                return was
        raise PermanentError(f"job {job_id} kept changing state; try again")

    def release_job(self, job_id: int) -> None:
        """The worker stopped a cancelled job: its lease is over."""
        with self.session() as s:
            s.execute(
                update(JobRow)
                .where(JobRow.id == job_id, JobRow.state == JobState.CANCELLED.value)
                .values(lease_owner=None, lease_expires_at=None)
            )


def _cancel(s: Session, job_id: int, by: str, now: float) -> str | None:
    """One try of :meth:`CancelQueries.cancel_job`: the state it was in, None if it changed."""
    job = s.get(JobRow, job_id)
    if job is None:
        raise KeyError(job_id)
    was = job.state
    if was == JobState.DONE.value:
        raise PermanentError(f"job {job_id} is done and delivered everywhere: nothing to cancel")
    if was == JobState.CANCELLED.value:
        raise PermanentError(f"job {job_id} is already cancelled")
    # A running job keeps its worker's lease until the worker has stopped (it is no longer
    # renewed): a resend waits for that.
    res = s.execute(
        update(JobRow)
        .where(JobRow.id == job_id, JobRow.state == was)
        .values(
            state=JobState.CANCELLED.value,
            reason=f"cancelled by {by}",
            stages={**job.stages, "cancelled": now},
        )
    )
    if not res.rowcount:  # type: ignore[attr-defined]
        return None
    # A delivery being sent now may still arrive; its end is recorded truthfully but neither
    # retried nor parked (gateway.db.deliveries).
    s.execute(
        update(DeliveryRow)
        .where(DeliveryRow.job_id == job_id, DeliveryRow.state != DeliveryState.DELIVERED.value)
        .values(state=DeliveryState.CANCELLED.value, lease_owner=None, lease_expires_at=None)
    )
    _audit_job(s, job, "cancelled", f"by {by} (was {was})", now)
    return was
