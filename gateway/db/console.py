"""The console's read queries: paged, filtered in SQL (the pages stay fast with tens of
thousands of jobs), returning rows and plain dicts. No patient data exists to return."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import String, cast, func, or_, select
from sqlalchemy.orm import Session

from gateway.db.tables import (
    AuditRow,
    DeliveryRow,
    InstanceRow,
    JobRow,
    SeriesRow,
    StudyRow,
)

# The audit outcome of an association the SCP refused (gateway.dicom.scp -> audit_association).
REJECTED = "rejected"


def _like_escape(text: str) -> str:
    """``text`` matched literally inside a LIKE pattern (escape character backslash)."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


@dataclass(frozen=True)
class JobFilter:
    state: str = ""
    rule: str = ""
    model: str = ""
    since: float | None = None
    until: float | None = None
    study_uids: Sequence[str] | None = None  # None: any; (): none (a search found nothing)


class PeerModelQueries:
    """The Peers and Models pages' queries (a mixin of :class:`ConsoleQueries`)."""

    session: Callable[..., AbstractContextManager[Session]]

    def peer_activity(self, rejected_limit: int = 50) -> tuple[dict[str, float], list[AuditRow]]:
        """Last accepted association per calling AE title (what it sent: images, structure
        sets, or nothing), and the latest rejected ones: the SCP audits an association it
        rejects (not allowed, wrong port, failed TLS handshake) as outcome ``rejected``."""
        with self.session() as s:
            last = dict(
                s.execute(
                    select(AuditRow.calling_ae, func.max(AuditRow.at))
                    .where(
                        AuditRow.event.in_(("association", "received", "qa")),
                        AuditRow.outcome != REJECTED,
                        AuditRow.calling_ae != "",
                    )
                    .group_by(AuditRow.calling_ae)
                ).all()
            )
            rejected = list(
                s.scalars(
                    select(AuditRow)
                    .where(AuditRow.event == "association", AuditRow.outcome == REJECTED)
                    .order_by(AuditRow.at.desc(), AuditRow.id.desc())
                    .limit(rejected_limit)
                )
            )
        return {str(k): float(v) for k, v in last.items()}, rejected

    def model_usage(self, names: Sequence[str], recent: int = 200) -> dict[str, dict[str, Any]]:
        """Per model: studies contoured (distinct studies of done jobs the model ran in), jobs
        where it failed, and its run times (``segment_s``) in its last ``recent`` such jobs.
        Read from the outcome JSON in SQL: no job's outcome is loaded whole."""
        out: dict[str, dict[str, Any]] = {}
        with self.session() as s:
            for name in names:
                state = JobRow.outcome[("models", name, "state")].as_string()
                ran = (JobRow.state == "done", state == "done")
                studies = s.scalar(select(func.count(func.distinct(JobRow.study_uid))).where(*ran))
                failed = s.scalar(select(func.count(JobRow.id)).where(state == "failed"))
                times = s.scalars(
                    select(JobRow.outcome[("models", name, "segment_s")].as_float())
                    .where(*ran)
                    .order_by(JobRow.id.desc())
                    .limit(recent)
                )
                out[name] = {
                    "studies": int(studies or 0),
                    "failed": int(failed or 0),
                    "segment_s": [float(t) for t in times if t is not None],
                }
        return out


class ConsoleQueries(PeerModelQueries):
    """Read queries of the console on :class:`gateway.db.database.Store` (a mixin)."""

    session: Callable[..., AbstractContextManager[Session]]

    def job_page(self, f: JobFilter, offset: int = 0, limit: int = 50) -> tuple[list[JobRow], int]:
        """One page of jobs, newest first, and how many match in all."""
        where = []
        if f.state:
            where.append(JobRow.state == f.state)
        if f.rule:
            where.append(JobRow.rule == f.rule)
        if f.model:
            # models is a JSON list of names (names match ^[A-Za-z0-9_.-]+$): exact element.
            where.append(
                cast(JobRow.models, String).like(f'%"{_like_escape(f.model)}"%', escape="\\")
            )
        if f.since is not None:
            where.append(JobRow.created_at >= f.since)
        if f.until is not None:
            where.append(JobRow.created_at < f.until)
        if f.study_uids is not None:
            where.append(JobRow.study_uid.in_(list(f.study_uids)))
        with self.session() as s:
            total = s.scalar(select(func.count(JobRow.id)).where(*where)) or 0
            rows = s.scalars(
                select(JobRow).where(*where).order_by(JobRow.id.desc()).offset(offset).limit(limit)
            )
            return list(rows), int(total)

    def job_rules(self) -> list[str]:
        with self.session() as s:
            return sorted(s.scalars(select(JobRow.rule).distinct()))

    def study_page(
        self,
        reason_only: bool = False,
        study_uids: Sequence[str] | None = None,
        offset: int = 0,
        limit: int = 50,
    ) -> tuple[list[dict[str, Any]], int]:
        """Studies newest first with series/instance counts, their reason (why waiting,
        refused, unrouted) and their jobs' states."""
        where = []
        if reason_only:
            where.append(StudyRow.reason != "")
        if study_uids is not None:
            where.append(StudyRow.study_uid.in_(list(study_uids)))
        with self.session() as s:
            total = s.scalar(select(func.count(StudyRow.study_uid)).where(*where)) or 0
            studies = list(
                s.scalars(
                    select(StudyRow)
                    .where(*where)
                    .order_by(StudyRow.last_received_at.desc())
                    .offset(offset)
                    .limit(limit)
                )
            )
            uids = [st.study_uid for st in studies]
            counts = {
                uid: (n_series, n_inst)
                for uid, n_series, n_inst in s.execute(
                    select(
                        SeriesRow.study_uid,
                        func.count(func.distinct(SeriesRow.series_uid)),
                        func.count(InstanceRow.sop_instance_uid),
                    )
                    .join(InstanceRow, InstanceRow.series_uid == SeriesRow.series_uid, isouter=True)
                    .where(SeriesRow.study_uid.in_(uids))
                    .group_by(SeriesRow.study_uid)
                )
            }
            jobs: dict[str, list[tuple[int, str, str]]] = {}
            for uid, jid, rule, state in s.execute(
                select(JobRow.study_uid, JobRow.id, JobRow.rule, JobRow.state)
                .where(JobRow.study_uid.in_(uids))
                .order_by(JobRow.id)
            ):
                jobs.setdefault(uid, []).append((jid, rule, state))
            out = [
                {
                    "study_uid": st.study_uid,
                    "calling_ae": st.calling_ae,
                    "first_received_at": st.first_received_at,
                    "last_received_at": st.last_received_at,
                    "series": counts.get(st.study_uid, (0, 0))[0],
                    "instances": counts.get(st.study_uid, (0, 0))[1],
                    "reason": st.reason or "",
                    "receiving": (st.open_associations or 0) > 0,
                    "jobs": jobs.get(st.study_uid, []),
                }
                for st in studies
            ]
            return out, int(total)

    def series_descriptions(self, series_uids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Series attributes per image set key (a multi-frame channel ``<uid>#<n>`` gets its
        series' attributes)."""
        uids = {key: key.split("#")[0] for key in series_uids}
        with self.session() as s:
            q = select(SeriesRow).where(SeriesRow.series_uid.in_(set(uids.values())))
            rows = {r.series_uid: dict(r.attributes or {}) for r in s.scalars(q)}
        return {key: rows[uid] for key, uid in uids.items() if uid in rows}

    def activity(self, since: float) -> dict[str, Any]:
        """What happened since ``since``: studies, instances, jobs and deliveries by state."""
        with self.session() as s:
            studies = s.scalar(
                select(func.count(StudyRow.study_uid)).where(StudyRow.first_received_at >= since)
            )
            instances = s.scalar(
                select(func.coalesce(func.sum(AuditRow.instances), 0)).where(
                    AuditRow.at >= since, AuditRow.event == "received", AuditRow.outcome == "stored"
                )
            )
            jobs = dict(
                s.execute(
                    select(JobRow.state, func.count(JobRow.id))
                    .where(JobRow.created_at >= since)
                    .group_by(JobRow.state)
                ).all()
            )
            deliveries = dict(
                s.execute(
                    select(DeliveryRow.state, func.count(DeliveryRow.id))
                    .join(JobRow, JobRow.id == DeliveryRow.job_id)
                    .where(JobRow.created_at >= since)
                    .group_by(DeliveryRow.state)
                ).all()
            )
            open_jobs = dict(
                s.execute(
                    select(JobRow.state, func.count(JobRow.id))
                    .where(JobRow.state.in_(("waiting", "queued", "running", "delivering")))
                    .group_by(JobRow.state)
                ).all()
            )
        return {
            "studies": int(studies or 0),
            "instances": int(instances or 0),
            "jobs": {str(k): int(v) for k, v in jobs.items()},
            "deliveries": {str(k): int(v) for k, v in deliveries.items()},
            "open_jobs": {str(k): int(v) for k, v in open_jobs.items()},
        }


class AuditSearchQueries:
    """The console's audit, peer and model-usage queries (a mixin of the Store)."""

    session: Callable[..., AbstractContextManager[Session]]

    def audit_page(
        self,
        text: str = "",
        event: str = "",
        since: float | None = None,
        until: float | None = None,
        offset: int = 0,
        limit: int | None = 100,
        outcome: str = "",
    ) -> tuple[list[AuditRow], int]:
        """Audit rows newest first; ``text`` is found in any text column (case-insensitive)."""
        where = []
        if event:
            where.append(AuditRow.event == event)
        if outcome:
            where.append(AuditRow.outcome == outcome)
        if since is not None:
            where.append(AuditRow.at >= since)
        if until is not None:
            where.append(AuditRow.at < until)
        if text:
            like = f"%{_like_escape(text.lower())}%"
            where.append(
                or_(
                    *(
                        func.lower(col).like(like, escape="\\")
                        for col in (
                            AuditRow.outcome,
                            AuditRow.calling_ae,
                            AuditRow.address,
                            AuditRow.study_uid,
                            AuditRow.series_uid,
                            AuditRow.model,
                            AuditRow.destination,
                            AuditRow.detail,
                        )
                    ),
                    cast(AuditRow.job_id, String) == text,
                )
            )
        with self.session() as s:
            total = s.scalar(select(func.count(AuditRow.id)).where(*where)) or 0
            q = select(AuditRow).where(*where).order_by(AuditRow.at.desc(), AuditRow.id.desc())
            q = q.offset(offset).limit(limit) if limit is not None else q
            return list(s.scalars(q)), int(total)

    def audit_events(self) -> list[str]:
        with self.session() as s:
            return sorted(s.scalars(select(AuditRow.event).distinct()))

    def job_audit(self, job_id: int) -> list[AuditRow]:
        with self.session() as s:
            q = select(AuditRow).where(AuditRow.job_id == job_id).order_by(AuditRow.at, AuditRow.id)
            return list(s.scalars(q))
