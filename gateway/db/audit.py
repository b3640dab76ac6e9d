"""The audit trail and retention: who sent or got what, and which studies may be purged."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from gateway.db.records import DeliveryState, JobState, StructureSetState
from gateway.db.tables import (
    AUDIT_COLUMNS,
    AuditRow,
    DeliveryRow,
    InstanceRow,
    JobRow,
    SeriesRow,
    StructureSetRow,
    StudyRow,
)

OPEN_SETS = (StructureSetState.PENDING.value, StructureSetState.COMPARING.value)
SETTLED_JOBS = (JobState.DONE.value, JobState.CANCELLED.value)
SETTLED_DELIVERIES = (DeliveryState.DELIVERED.value, DeliveryState.CANCELLED.value)


class AuditQueries:
    """Audit and retention queries of :class:`gateway.db.database.Store` (a mixin)."""

    session: Callable[..., AbstractContextManager[Session]]

    def audit(self, event: str, outcome: str, now: float | None = None, **fields: Any) -> None:
        """Append one audit row (fields: see :data:`AUDIT_COLUMNS`)."""
        row = AuditRow(at=time.time() if now is None else now, event=event, outcome=outcome)
        for key, value in fields.items():
            setattr(row, key, value if value is not None or key == "job_id" else "")
        with self.session() as s:
            s.add(row)

    def audit_rows(self, since: float = 0.0, until: float | None = None) -> list[dict[str, Any]]:
        query = select(AuditRow).where(AuditRow.at >= since).order_by(AuditRow.at, AuditRow.id)
        if until is not None:
            query = query.where(AuditRow.at < until)
        with self.session() as s:
            return [{c: getattr(r, c) for c in AUDIT_COLUMNS} for r in s.scalars(query)]

    # -- retention ---------------------------------------------------------------------------------

    def purgeable_studies(self, older_than: float) -> list[str]:
        """Studies last touched before ``older_than`` whose work is all finished and delivered:
        no job waiting, queued, running or delivering, no failed job (it may be resent), and
        every delivery delivered (a cancelled job and its deliveries count as done). A study no
        rule matched (no jobs) is purgeable too."""
        with self.session() as s:
            return _purgeable(s, older_than)

    def delete_study(self, study_uid: str, older_than: float) -> list[str]:
        """Delete a study's rows (instances, series, study; its jobs' RTSTRUCT and preview
        paths are cleared) if it is still purgeable, in the same transaction as that check;
        return the instance, RTSTRUCT and preview paths to delete."""
        with self.session() as s:
            if study_uid not in _purgeable(s, older_than, study_uid):
                return []
            series = list(
                s.scalars(select(SeriesRow.series_uid).where(SeriesRow.study_uid == study_uid))
            )
            paths = list(
                s.scalars(select(InstanceRow.path).where(InstanceRow.series_uid.in_(series)))
            )
            for job in s.scalars(select(JobRow).where(JobRow.study_uid == study_uid)):
                # The SEG and classic copy beside the RTSTRUCT (the RTSTRUCT is one of them).
                paths += [a.path for a in job.job_outcome.artifacts if a.path != job.rtstruct_path]
                if job.rtstruct_path:
                    paths.append(job.rtstruct_path)
                    job.rtstruct_path = None
                if job.preview_path:
                    paths.append(job.preview_path)
                    job.preview_path = None
            # Structure sets sent back: their files go, their rows (and QA results) stay.
            for returned in s.scalars(
                select(StructureSetRow).where(StructureSetRow.study_uid == study_uid)
            ):
                if returned.path:
                    paths.append(returned.path)
                    returned.path = ""
            s.execute(delete(InstanceRow).where(InstanceRow.series_uid.in_(series)))
            s.execute(delete(SeriesRow).where(SeriesRow.study_uid == study_uid))
            s.execute(delete(StudyRow).where(StudyRow.study_uid == study_uid))
            return paths


def _purgeable(s: Session, older_than: float, only: str | None = None) -> list[str]:
    query = select(StudyRow.study_uid).where(StudyRow.last_received_at < older_than)
    if only is not None:
        query = query.where(StudyRow.study_uid == only)
    out = []
    for uid in s.scalars(query).all():
        jobs = list(s.scalars(select(JobRow).where(JobRow.study_uid == uid)))
        # A cancelled job counts as done, once its worker (if it was running) has stopped.
        if any(j.state not in SETTLED_JOBS or j.lease_owner for j in jobs):
            continue
        comparing = s.scalar(
            select(func.count()).where(
                StructureSetRow.study_uid == uid,
                StructureSetRow.state.in_(OPEN_SETS),
            )
        )
        if comparing:  # an approved set still to be compared needs the study's images
            continue
        undelivered = s.scalar(
            select(func.count(DeliveryRow.id)).where(
                DeliveryRow.job_id.in_([j.id for j in jobs]),
                DeliveryRow.state.not_in(SETTLED_DELIVERIES),
            )
        )
        if not undelivered:
            out.append(uid)
    return out
