"""The database: studies, series, instances, jobs and deliveries (SQLAlchemy 2).

SQLite is the embedded default (WAL, synchronous NORMAL, busy timeout); the URL comes from config so
PostgreSQL can follow. Rows hold UIDs, geometry and series descriptions, never patient names or IDs.
"""

from __future__ import annotations

import functools
import secrets
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import (
    case,
    create_engine,
    delete,
    event,
    func,
    select,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from gateway.db import migrate
from gateway.db.records import (
    DeliveryState,
    InstanceRecord,
    JobState,
    SeriesInfo,
    SliceGeometry,
    StudyInfo,
    StudyTimes,
)
from gateway.db.tables import (
    AUDIT_COLUMNS,
    AuditRow,
    DeliveryRow,
    InstanceRow,
    JobRow,
    SeriesRow,
    SettingRow,
    StudyRow,
)
from gateway.db.work import WorkQueries
from gateway.errors import UidConflict


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


class Store(WorkQueries):
    """All database access of the gateway."""

    def __init__(self, url: str):
        self.engine: Engine = create_engine(url, future=True)
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        migrate.upgrade(self.engine)
        self._session = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._session.begin() as s:
            yield s

    def _insert(self, table: Any) -> Any:
        if self.engine.dialect.name == "postgresql":
            from sqlalchemy.dialects import postgresql

            return postgresql.insert(table)
        from sqlalchemy.dialects import sqlite

        return sqlite.insert(table)

    # -- reception -------------------------------------------------------------------------------

    def record_instance(
        self,
        rec: InstanceRecord,
        calling_ae: str,
        called_ae: str,
        now: float | None = None,
        opens_association: bool = False,
    ) -> None:
        """Record (or re-record, on a resend) one received instance and touch its series/study.
        ``opens_association``: the first instance of this study in an association, which counts
        as sending the study until :meth:`association_ended`.

        Raises :class:`UidConflict`, recording nothing, when the instance's SOP Instance UID is
        recorded in another series or study or its Series Instance UID in another study: another
        study's rows are never rewritten or joined.
        """
        now = time.time() if now is None else now
        opened = 1 if opens_association else 0
        with self.session() as s:
            # The study upsert comes first: on SQLite it takes the write lock, so the check at
            # the end reads rows no other writer can change before this transaction commits.
            ins = self._insert(StudyRow).values(
                study_uid=rec.study_uid,
                calling_ae=calling_ae,
                called_ae=called_ae,
                first_received_at=now,
                last_received_at=now,
                open_associations=opened,
                reason="",
            )
            s.execute(
                ins.on_conflict_do_update(
                    index_elements=["study_uid"],
                    set_={"last_received_at": now}
                    | ({"open_associations": StudyRow.open_associations + 1} if opened else {})
                    | ({"calling_ae": calling_ae, "called_ae": called_ae} if calling_ae else {}),
                )
            )
            ins = self._insert(SeriesRow).values(
                series_uid=rec.series_uid,
                study_uid=rec.study_uid,
                attributes=rec.series_attributes,
                first_received_at=now,
                last_received_at=now,
                patient_key=rec.patient_key or None,
            )
            s.execute(
                ins.on_conflict_do_update(
                    index_elements=["series_uid"],
                    set_={
                        "last_received_at": now,
                        "patient_key": func.coalesce(
                            SeriesRow.patient_key, rec.patient_key or None
                        ),
                    },
                    where=SeriesRow.study_uid == rec.study_uid,
                )
            )
            ins = self._insert(InstanceRow).values(
                sop_instance_uid=rec.sop_instance_uid,
                series_uid=rec.series_uid,
                sop_class_uid=rec.sop_class_uid,
                path=rec.path,
                received_at=now,
                geometry=rec.geometry,
                size=rec.size,
            )
            s.execute(
                ins.on_conflict_do_update(
                    index_elements=["sop_instance_uid"],
                    set_={
                        "received_at": now,
                        "path": rec.path,
                        "geometry": rec.geometry,
                        "size": rec.size,
                    },
                    where=InstanceRow.series_uid == rec.series_uid,
                )
            )
            conflict = _uid_conflict(s, rec)
            if conflict is not None:
                raise conflict  # rolls back this transaction: nothing of it is recorded

    def uid_conflict(self, rec: InstanceRecord) -> UidConflict | None:
        """The conflict recording ``rec`` would meet (see :meth:`record_instance`), else None."""
        with self.session() as s:
            return _uid_conflict(s, rec)

    @functools.cached_property
    def patient_salt(self) -> str:
        """This installation's salt for patient keys: made once, kept in the database."""
        with self.session() as s:
            s.execute(
                self._insert(SettingRow)
                .values(key="patient_salt", value=secrets.token_hex(32))
                .on_conflict_do_nothing(index_elements=["key"])
            )
            return str(s.scalar(select(SettingRow.value).where(SettingRow.key == "patient_salt")))

    def study_usage(self, study_uid: str) -> tuple[int, int]:
        """(instances, bytes) received so far for a study."""
        query = (
            select(
                func.count(InstanceRow.sop_instance_uid),
                func.coalesce(func.sum(InstanceRow.size), 0),
            )
            .join(SeriesRow, SeriesRow.series_uid == InstanceRow.series_uid)
            .where(SeriesRow.study_uid == study_uid)
        )
        with self.session() as s:
            count, size = s.execute(query).one()
            return int(count), int(size)

    def has_instance(self, sop_instance_uid: str) -> bool:
        with self.session() as s:
            return s.get(InstanceRow, sop_instance_uid) is not None

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

    def known_instances(self) -> set[str]:
        with self.session() as s:
            return set(s.scalars(select(InstanceRow.sop_instance_uid)))

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
                series.append(
                    SeriesInfo(
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

    # -- audit -----------------------------------------------------------------------------------

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
        every delivery delivered. A study no rule matched (no jobs) is purgeable too."""
        with self.session() as s:
            return _purgeable(s, older_than)

    def delete_study(self, study_uid: str, older_than: float) -> list[str]:
        """Delete a study's rows (instances, series, study; its jobs' RTSTRUCT paths are
        cleared) if it is still purgeable, in the same transaction as that check; return the
        instance and RTSTRUCT paths to delete."""
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
                if job.rtstruct_path:
                    paths.append(job.rtstruct_path)
                    job.rtstruct_path = None
            s.execute(delete(InstanceRow).where(InstanceRow.series_uid.in_(series)))
            s.execute(delete(SeriesRow).where(SeriesRow.study_uid == study_uid))
            s.execute(delete(StudyRow).where(StudyRow.study_uid == study_uid))
            return paths


def _uid_conflict(s: Session, rec: InstanceRecord) -> UidConflict | None:
    owner = s.scalar(select(SeriesRow.study_uid).where(SeriesRow.series_uid == rec.series_uid))
    if owner is not None and owner != rec.study_uid:
        return UidConflict(
            "Series Instance UID already belongs to another study",
            f"series {rec.series_uid} of study {rec.study_uid} is recorded in study {owner}",
        )
    held = s.execute(
        select(InstanceRow.series_uid, SeriesRow.study_uid)
        .join(SeriesRow, SeriesRow.series_uid == InstanceRow.series_uid)
        .where(InstanceRow.sop_instance_uid == rec.sop_instance_uid)
    ).first()
    if held is None or held.series_uid == rec.series_uid:
        return None
    where = "study" if held.study_uid != rec.study_uid else "series"
    return UidConflict(
        f"SOP Instance UID already stored in another {where}",
        f"instance {rec.sop_instance_uid} of study {rec.study_uid}, series {rec.series_uid} is "
        f"recorded in study {held.study_uid}, series {held.series_uid}",
    )


def _purgeable(s: Session, older_than: float, only: str | None = None) -> list[str]:
    query = select(StudyRow.study_uid).where(StudyRow.last_received_at < older_than)
    if only is not None:
        query = query.where(StudyRow.study_uid == only)
    out = []
    for uid in s.scalars(query).all():
        jobs = list(s.scalars(select(JobRow).where(JobRow.study_uid == uid)))
        if any(j.state != JobState.DONE.value for j in jobs):
            continue
        undelivered = s.scalar(
            select(func.count(DeliveryRow.id)).where(
                DeliveryRow.job_id.in_([j.id for j in jobs]),
                DeliveryRow.state != DeliveryState.DELIVERED.value,
            )
        )
        if not undelivered:
            out.append(uid)
    return out


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    # First, so that switching to WAL, which needs a lock, waits for a concurrent start too.
    cur.execute(f"PRAGMA busy_timeout={migrate.SQLITE_BUSY_TIMEOUT_MS}")
    cur.execute("PRAGMA journal_mode=WAL")
    # NORMAL: a commit survives a process crash; on power loss the last rows may roll back, and
    # Receiver.recover_spool() re-records them from the spool, which is fsynced per instance.
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()
