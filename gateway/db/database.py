"""The database: studies, series, instances, jobs and deliveries (SQLAlchemy 2).

SQLite is the embedded default (WAL, synchronous NORMAL, busy timeout); the URL comes from config so
PostgreSQL can follow. Rows hold UIDs, geometry and series descriptions, never patient names or IDs.
"""

from __future__ import annotations

import enum
import functools
import secrets
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import (
    JSON,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    create_engine,
    delete,
    event,
    func,
    select,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from gateway.db.records import (
    DeliveryState,
    InstanceRecord,
    JobState,
    SeriesInfo,
    SliceGeometry,
    StudyInfo,
    StudyTimes,
)
from gateway.errors import UidConflict


class Base(DeclarativeBase):
    pass


class StudyRow(Base):
    __tablename__ = "studies"
    study_uid: Mapped[str] = mapped_column(String(64), primary_key=True)
    calling_ae: Mapped[str] = mapped_column(String(16))
    called_ae: Mapped[str] = mapped_column(String(16))
    first_received_at: Mapped[float] = mapped_column(Float)
    last_received_at: Mapped[float] = mapped_column(Float)
    # When an association that sent instances of this study ended: released cleanly, or cut off.
    released_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    interrupted_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class SeriesRow(Base):
    __tablename__ = "series"
    series_uid: Mapped[str] = mapped_column(String(64), primary_key=True)
    study_uid: Mapped[str] = mapped_column(ForeignKey("studies.study_uid"), index=True)
    attributes: Mapped[dict[str, Any]] = mapped_column(JSON)
    first_received_at: Mapped[float] = mapped_column(Float)
    last_received_at: Mapped[float] = mapped_column(Float)
    # Salted hash of PatientID + IssuerOfPatientID of the series' first instance (never the
    # clear value): lets assembly refuse to combine series of different patients.
    patient_key: Mapped[str | None] = mapped_column(String(64), nullable=True)


class InstanceRow(Base):
    __tablename__ = "instances"
    sop_instance_uid: Mapped[str] = mapped_column(String(64), primary_key=True)
    series_uid: Mapped[str] = mapped_column(ForeignKey("series.series_uid"), index=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(Text)
    received_at: Mapped[float] = mapped_column(Float)
    geometry: Mapped[dict[str, Any]] = mapped_column(JSON)
    size: Mapped[int] = mapped_column(Integer, default=0)  # bytes as received


class JobRow(Base):
    __tablename__ = "jobs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    study_uid: Mapped[str] = mapped_column(String(64), index=True)
    rule: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(255))  # the rule's models, comma-separated
    state: Mapped[str] = mapped_column(String(16), index=True)
    reason: Mapped[str] = mapped_column(Text, default="")
    input_series: Mapped[list[str]] = mapped_column(JSON, default=list)
    rtstruct_uid: Mapped[str | None] = mapped_column(String(64), nullable=True)
    rtstruct_path: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    stages: Mapped[dict[str, float]] = mapped_column(JSON, default=dict)
    results: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class DeliveryRow(Base):
    __tablename__ = "deliveries"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    destination: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[float] = mapped_column(Float, default=0.0)
    last_status: Mapped[str] = mapped_column(Text, default="")
    delivered_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class AuditRow(Base):
    """Who sent or got what, when, with what outcome. UIDs, AE titles, addresses, counts, model
    names and versions only: never patient names, IDs or birth dates."""

    __tablename__ = "audit"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[float] = mapped_column(Float, index=True)
    event: Mapped[str] = mapped_column(String(32))  # association, received, job, delivery, purge
    outcome: Mapped[str] = mapped_column(String(32))
    calling_ae: Mapped[str] = mapped_column(String(16), default="")
    address: Mapped[str] = mapped_column(String(64), default="")
    study_uid: Mapped[str] = mapped_column(String(64), default="")
    series_uid: Mapped[str] = mapped_column(String(64), default="")
    instances: Mapped[int] = mapped_column(Integer, default=0)
    job_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    model: Mapped[str] = mapped_column(String(255), default="")  # "name version, ..."
    destination: Mapped[str] = mapped_column(String(64), default="")
    detail: Mapped[str] = mapped_column(Text, default="")


class SettingRow(Base):
    """Per-installation values made once and kept with the data (e.g. the patient-key salt)."""

    __tablename__ = "settings"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


AUDIT_COLUMNS = (
    "at",
    "event",
    "outcome",
    "calling_ae",
    "address",
    "study_uid",
    "series_uid",
    "instances",
    "job_id",
    "model",
    "destination",
    "detail",
)


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


class Store:
    """All database access of the gateway."""

    def __init__(self, url: str):
        self.engine: Engine = create_engine(url, future=True)
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        Base.metadata.create_all(self.engine)
        self._add_missing_columns()
        self._session = sessionmaker(self.engine, expire_on_commit=False)

    def _add_missing_columns(self) -> None:
        """Bring a database made by an earlier version up to date: add the columns it lacks
        (all nullable or with a default). New tables were made by ``create_all``."""
        from sqlalchemy import inspect, text

        inspector = inspect(self.engine)
        with self.engine.begin() as conn:
            for table in Base.metadata.sorted_tables:
                have = {c["name"] for c in inspector.get_columns(table.name)}
                for column in table.columns:
                    if column.name in have:
                        continue
                    ddl = column.type.compile(dialect=self.engine.dialect)
                    default = getattr(column.default, "arg", None)
                    suffix = f" DEFAULT {default!r}" if isinstance(default, int | float) else ""
                    conn.execute(
                        text(f"ALTER TABLE {table.name} ADD COLUMN {column.name} {ddl}{suffix}")
                    )

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
        self, rec: InstanceRecord, calling_ae: str, called_ae: str, now: float | None = None
    ) -> None:
        """Record (or re-record, on a resend) one received instance and touch its series/study.

        Raises :class:`UidConflict`, recording nothing, when the instance's SOP Instance UID is
        recorded in another series or study or its Series Instance UID in another study: another
        study's rows are never rewritten or joined.
        """
        now = time.time() if now is None else now
        with self.session() as s:
            # The study upsert comes first: on SQLite it takes the write lock, so the check at
            # the end reads rows no other writer can change before this transaction commits.
            ins = self._insert(StudyRow).values(
                study_uid=rec.study_uid,
                calling_ae=calling_ae,
                called_ae=called_ae,
                first_received_at=now,
                last_received_at=now,
            )
            s.execute(
                ins.on_conflict_do_update(
                    index_elements=["study_uid"],
                    set_={"last_received_at": now}
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
        """Record how an association that sent instances of these studies ended."""
        column = "released_at" if clean else "interrupted_at"
        with self.session() as s:
            s.execute(
                update(StudyRow)
                .where(StudyRow.study_uid.in_(list(study_uids)))
                .values({column: now})
            )

    def mark_unfinished_receptions(self, now: float) -> list[str]:
        """At start-up: studies whose last instance came after their last association ended
        (it was open when the process stopped) are marked interrupted now; return them."""
        with self.session() as s:
            rows = list(
                s.scalars(
                    select(StudyRow).where(
                        (StudyRow.released_at.is_(None))
                        | (StudyRow.released_at < StudyRow.last_received_at),
                        (StudyRow.interrupted_at.is_(None))
                        | (StudyRow.interrupted_at < StudyRow.last_received_at),
                    )
                )
            )
            for row in rows:
                row.interrupted_at = now
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
            )

    def list_studies(self) -> list[dict[str, Any]]:
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
            .order_by(StudyRow.first_received_at)
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
                }
                for st, n_series, n_inst in s.execute(query)
            ]

    def studies_with_open_work(self) -> list[str]:
        """Studies that may still need a readiness check (used to recover after a restart): a
        job waiting for inputs, or instances received after the study's latest job was opened."""
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
            waiting = set(
                s.scalars(select(JobRow.study_uid).where(JobRow.state == JobState.WAITING.value))
            )
            waiting.update(s.scalars(query))
            return sorted(waiting)

    # -- jobs ------------------------------------------------------------------------------------

    def jobs_for(self, study_uid: str, rule: str) -> list[JobRow]:
        with self.session() as s:
            return list(
                s.scalars(
                    select(JobRow)
                    .where(JobRow.study_uid == study_uid, JobRow.rule == rule)
                    .order_by(JobRow.id)
                )
            )

    def create_job(self, study_uid: str, rule: str, model: str, now: float) -> JobRow:
        with self.session() as s:
            job = JobRow(
                study_uid=study_uid,
                rule=rule,
                model=model,
                state=JobState.WAITING.value,
                reason="waiting for inputs",
                input_series=[],
                created_at=now,
                stages={"created": now},
                results={},
            )
            s.add(job)
            s.flush()
            return job

    def job(self, job_id: int) -> JobRow | None:
        with self.session() as s:
            return s.get(JobRow, job_id)

    def list_jobs(self, limit: int = 100) -> list[JobRow]:
        with self.session() as s:
            return list(s.scalars(select(JobRow).order_by(JobRow.id.desc()).limit(limit)))

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
        now = time.time() if now is None else now
        with self.session() as s:
            job = s.get(JobRow, job_id)
            if job is None:
                raise KeyError(job_id)
            if state is not None:
                job.state = state.value
            if reason is not None:
                job.reason = reason
            if stage is not None:
                job.stages = {**job.stages, stage: now}
            for k, v in fields.items():
                setattr(job, k, v)
            s.flush()
            return job

    def claim_job(self, job_id: int, from_state: JobState, to_state: JobState) -> bool:
        """Atomically move a job between states; False if it was not in ``from_state``."""
        with self.session() as s:
            res = s.execute(
                update(JobRow)
                .where(JobRow.id == job_id, JobRow.state == from_state.value)
                .values(state=to_state.value)
            )
            return bool(res.rowcount)  # type: ignore[attr-defined]

    # -- deliveries ------------------------------------------------------------------------------

    def create_deliveries(self, job_id: int, destinations: Sequence[str]) -> list[int]:
        with self.session() as s:
            existing = {
                d.destination: d.id
                for d in s.scalars(select(DeliveryRow).where(DeliveryRow.job_id == job_id))
            }
            ids = []
            for dest in destinations:
                if dest in existing:
                    ids.append(existing[dest])
                    continue
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
                ids.append(row.id)
            return ids

    def claim_delivery(self, delivery_id: int, now: float) -> bool:
        """Atomically take a due, pending delivery for sending; False if not due or not pending."""
        with self.session() as s:
            res = s.execute(
                update(DeliveryRow)
                .where(
                    DeliveryRow.id == delivery_id,
                    DeliveryRow.state == DeliveryState.PENDING.value,
                    DeliveryRow.next_attempt_at <= now + 1.0,
                )
                .values(state=DeliveryState.SENDING.value)
            )
            return bool(res.rowcount)  # type: ignore[attr-defined]

    def delivery(self, delivery_id: int) -> DeliveryRow | None:
        with self.session() as s:
            return s.get(DeliveryRow, delivery_id)

    def deliveries_for(self, job_id: int) -> list[DeliveryRow]:
        with self.session() as s:
            return list(
                s.scalars(
                    select(DeliveryRow).where(DeliveryRow.job_id == job_id).order_by(DeliveryRow.id)
                )
            )

    def pending_deliveries(self) -> list[DeliveryRow]:
        with self.session() as s:
            return list(
                s.scalars(
                    select(DeliveryRow)
                    .where(DeliveryRow.state == DeliveryState.PENDING.value)
                    .order_by(DeliveryRow.id)
                )
            )

    def older_unfinished_delivery(self, delivery_id: int) -> int | None:
        """The id of a delivery to the same destination, of an older job (jobs open in order of
        arrival), still pending or sending."""
        unfinished = (DeliveryState.PENDING.value, DeliveryState.SENDING.value)
        with self.session() as s:
            d = s.get(DeliveryRow, delivery_id)
            if d is None:
                return None
            return s.scalar(
                select(DeliveryRow.id)
                .where(
                    DeliveryRow.destination == d.destination,
                    (DeliveryRow.job_id < d.job_id)
                    | ((DeliveryRow.job_id == d.job_id) & (DeliveryRow.id < d.id)),
                    DeliveryRow.state.in_(unfinished),
                )
                .order_by(DeliveryRow.job_id, DeliveryRow.id)
                .limit(1)
            )

    def next_pending_delivery(self, destination: str) -> DeliveryRow | None:
        with self.session() as s:
            return s.scalar(
                select(DeliveryRow)
                .where(
                    DeliveryRow.destination == destination,
                    DeliveryRow.state == DeliveryState.PENDING.value,
                )
                .order_by(DeliveryRow.job_id, DeliveryRow.id)
                .limit(1)
            )

    def update_delivery(self, delivery_id: int, **fields: Any) -> DeliveryRow:
        with self.session() as s:
            row = s.get(DeliveryRow, delivery_id)
            if row is None:
                raise KeyError(delivery_id)
            for k, v in fields.items():
                setattr(row, k, v.value if isinstance(v, enum.Enum) else v)
            s.flush()
            return row

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
    cur.execute("PRAGMA journal_mode=WAL")
    # NORMAL: a commit survives a process crash; on power loss the last rows may roll back, and
    # Receiver.recover_spool() re-records them from the spool, which is fsynced per instance.
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()
