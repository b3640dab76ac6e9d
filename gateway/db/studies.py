"""Studies: what was received, whether an association is still sending it, and the one
readiness timer (``studies.recheck_at``) that says when a study is next checked."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

from sqlalchemy import case, func, select, update
from sqlalchemy.orm import Session

from gateway.db.image_sets import image_sets
from gateway.db.records import JobState, SeriesInfo, SliceGeometry, StudyInfo, StudyTimes
from gateway.db.tables import InstanceRow, JobRow, SeriesRow, StudyRow
from gateway.db.work import recheck_by


class StudyQueries:
    """Study queries of :class:`gateway.db.database.Store` (a mixin)."""

    session: Callable[..., AbstractContextManager[Session]]

    # -- the readiness timer -------------------------------------------------------------------

    def schedule_check(self, study_uid: str, at: float) -> None:
        """Check the study at ``at`` or earlier (an earlier pending check is kept)."""
        with self.session() as s:
            recheck_by(s, study_uid, at)

    def due_checks(self, now: float, limit: int = 100) -> list[tuple[str, float]]:
        with self.session() as s:
            rows = s.execute(
                select(StudyRow.study_uid, StudyRow.recheck_at)
                .where(StudyRow.recheck_at <= now)
                .order_by(StudyRow.recheck_at)
                .limit(limit)
            )
            return [(uid, float(at)) for uid, at in rows if at is not None]

    def claim_recheck(self, study_uid: str, seen: float) -> bool:
        """Take a due check: True for exactly one of the processes that saw it."""
        with self.session() as s:
            res = s.execute(
                update(StudyRow)
                .where(StudyRow.study_uid == study_uid, StudyRow.recheck_at == seen)
                .values(recheck_at=None)
            )
            return bool(res.rowcount)  # type: ignore[attr-defined]

    def set_study_reason(self, study_uid: str, reason: str) -> bool:
        """Record why a study is not processed; True when the reason changed."""
        with self.session() as s:
            res = s.execute(
                update(StudyRow)
                .where(StudyRow.study_uid == study_uid, StudyRow.reason != reason)
                .values(reason=reason)
            )
            return bool(res.rowcount)  # type: ignore[attr-defined]

    def association_ended(self, study_uids: Sequence[str], clean: bool, now: float) -> None:
        """An association that sent instances of these studies ended (released, or cut off):
        it no longer counts as sending them, and each is checked now."""
        column = "released_at" if clean else "interrupted_at"
        with self.session() as s:
            s.execute(
                update(StudyRow)
                .where(StudyRow.study_uid.in_(list(study_uids)))
                .values(
                    {
                        column: now,
                        "open_associations": case(
                            (StudyRow.open_associations > 0, StudyRow.open_associations - 1),
                            else_=0,
                        ),
                        "recheck_at": now,
                    }
                )
            )

    def mark_unfinished_receptions(self, now: float) -> list[str]:
        """At start-up of the receiving process: no association is open any more. Studies that
        were being sent when it stopped (an association open, or instances after the last
        association ended) are marked interrupted now and checked; return them."""
        with self.session() as s:
            rows = list(
                s.scalars(
                    select(StudyRow).where(
                        (StudyRow.open_associations > 0)
                        | (
                            (
                                (StudyRow.released_at.is_(None))
                                | (StudyRow.released_at < StudyRow.last_received_at)
                            )
                            & (
                                (StudyRow.interrupted_at.is_(None))
                                | (StudyRow.interrupted_at < StudyRow.last_received_at)
                            )
                        )
                    )
                )
            )
            for row in rows:
                row.interrupted_at = now
                row.open_associations = 0
                row.recheck_at = now
            return [r.study_uid for r in rows]

    def study_times(self, study_uid: str) -> StudyTimes | None:
        """When a study's first and last instances arrived (cheap: no series or instances)."""
        with self.session() as s:
            st = s.get(StudyRow, study_uid)
            return None if st is None else StudyTimes(st.first_received_at, st.last_received_at)

    def study(self, study_uid: str) -> StudyInfo | None:
        with self.session() as s:
            st = s.get(StudyRow, study_uid)
            if st is None:
                return None
            series_rows = s.scalars(select(SeriesRow).where(SeriesRow.study_uid == study_uid))
            series = []
            for se in series_rows:
                inst = s.scalars(
                    select(InstanceRow).where(InstanceRow.series_uid == se.series_uid)
                ).all()
                base = SeriesInfo(
                    series_uid=se.series_uid,
                    attributes=dict(se.attributes),
                    first_received_at=se.first_received_at,
                    last_received_at=se.last_received_at,
                    slices=tuple(_slice(i.sop_instance_uid, i.geometry) for i in inst),
                    paths={i.sop_instance_uid: i.path for i in inst},
                    received=(
                        min((i.received_at for i in inst), default=se.first_received_at),
                        max((i.received_at for i in inst), default=se.last_received_at),
                    ),
                    patient_key=se.patient_key or "",
                )
                series.extend(
                    image_sets(base, {i.sop_instance_uid: i.geometry or {} for i in inst})
                )
            return StudyInfo(
                study_uid=st.study_uid,
                calling_ae=st.calling_ae,
                called_ae=st.called_ae,
                first_received_at=st.first_received_at,
                last_received_at=st.last_received_at,
                series=tuple(sorted(series, key=lambda x: x.first_received_at)),
                interrupted_at=st.interrupted_at
                if st.interrupted_at is not None
                and (st.released_at is None or st.interrupted_at > st.released_at)
                else None,
                open_associations=st.open_associations or 0,
            )

    def studies_for_patient_key(self, key: str) -> list[str]:
        """The studies (UIDs, the last received first) with a series of the patient whose
        salted key (:func:`gateway.receive.receiver.key_of`) is ``key``."""
        if not key:
            return []
        query = (
            select(StudyRow.study_uid)
            .where(
                StudyRow.study_uid.in_(
                    select(SeriesRow.study_uid).where(SeriesRow.patient_key == key)
                )
            )
            .order_by(StudyRow.last_received_at.desc(), StudyRow.study_uid)
        )
        with self.session() as s:
            return list(s.scalars(query))

    def list_studies(self, limit: int | None = None) -> list[dict[str, Any]]:
        """Studies in order of arrival; with ``limit``, only the ``limit`` that arrived last."""
        counts = (
            select(
                SeriesRow.study_uid,
                func.count(func.distinct(SeriesRow.series_uid)).label("series"),
                func.count(InstanceRow.sop_instance_uid).label("instances"),
            )
            .join(InstanceRow, InstanceRow.series_uid == SeriesRow.series_uid, isouter=True)
            .group_by(SeriesRow.study_uid)
            .subquery()
        )
        query = (
            select(StudyRow, counts.c.series, counts.c.instances)
            .join(counts, counts.c.study_uid == StudyRow.study_uid, isouter=True)
            .order_by(StudyRow.first_received_at.desc(), StudyRow.study_uid.desc())
            .limit(limit)
        )
        with self.session() as s:
            return [
                {
                    "study_uid": st.study_uid,
                    "calling_ae": st.calling_ae,
                    "series": n_series or 0,
                    "instances": n_inst or 0,
                    "first_received_at": st.first_received_at,
                    "last_received_at": st.last_received_at,
                    "reason": st.reason or "",
                }
                for st, n_series, n_inst in s.execute(query)
            ][::-1]

    def schedule_open_work(self, now: float) -> int:
        """After a start: check every study that may need it (a job waiting for inputs, or
        instances received after its latest job was opened); return how many."""
        latest = (
            select(JobRow.study_uid, func.max(JobRow.created_at).label("opened"))
            .group_by(JobRow.study_uid)
            .subquery()
        )
        query = (
            select(StudyRow.study_uid)
            .join(latest, latest.c.study_uid == StudyRow.study_uid, isouter=True)
            .where((latest.c.opened.is_(None)) | (latest.c.opened < StudyRow.last_received_at))
        )
        with self.session() as s:
            uids = set(
                s.scalars(select(JobRow.study_uid).where(JobRow.state == JobState.WAITING.value))
            )
            uids.update(s.scalars(query))
            s.execute(
                update(StudyRow)
                .where(
                    StudyRow.study_uid.in_(sorted(uids)),
                    (StudyRow.recheck_at.is_(None)) | (StudyRow.recheck_at > now),
                )
                .values(recheck_at=now)
            )
            return len(uids)


def _slice(sop_uid: str, g: dict[str, Any]) -> SliceGeometry:
    def tup(key: str) -> tuple[float, ...] | None:
        v = g.get(key)
        return tuple(float(x) for x in v) if v is not None else None

    return SliceGeometry(
        sop_instance_uid=sop_uid,
        frame_of_reference_uid=g.get("FrameOfReferenceUID"),
        position=tup("ImagePositionPatient"),  # type: ignore[arg-type]
        orientation=tup("ImageOrientationPatient"),
        pixel_spacing=tup("PixelSpacing"),  # type: ignore[arg-type]
        rows=g.get("Rows"),
        columns=g.get("Columns"),
        frames=g.get("NumberOfFrames"),
    )
