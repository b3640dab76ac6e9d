"""The database tables (SQLAlchemy 2 ORM). Rows hold UIDs, geometry, series descriptions and
salted hashes, never patient names, IDs or birth dates. Schema changes are Alembic migrations
(:mod:`gateway.db.migrations`).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, Boolean, Float, ForeignKey, Index, Integer, String, Text, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from gateway.db.records import TERMINAL, JobState
from gateway.job import JobOutcome, JobPlan


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
    # Associations sending this study right now (a study being received is never ready).
    open_associations: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # The one readiness timer: when the study is next checked (None: nothing to check).
    recheck_at: Mapped[float | None] = mapped_column(Float, nullable=True, index=True)
    reason: Mapped[str] = mapped_column(Text, default="", server_default="")  # why not processed


class SeriesRow(Base):
    __tablename__ = "series"
    series_uid: Mapped[str] = mapped_column(String(64), primary_key=True)
    study_uid: Mapped[str] = mapped_column(ForeignKey("studies.study_uid"), index=True)
    attributes: Mapped[dict[str, Any]] = mapped_column(JSON)
    first_received_at: Mapped[float] = mapped_column(Float)
    last_received_at: Mapped[float] = mapped_column(Float)
    # Salted hash of PatientID + IssuerOfPatientID of the series' first instance (never the
    # clear value): lets assembly refuse to combine series of different patients.
    patient_key: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)


class InstanceRow(Base):
    __tablename__ = "instances"
    sop_instance_uid: Mapped[str] = mapped_column(String(64), primary_key=True)
    series_uid: Mapped[str] = mapped_column(ForeignKey("series.series_uid"), index=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(Text)
    received_at: Mapped[float] = mapped_column(Float)
    geometry: Mapped[dict[str, Any]] = mapped_column(JSON)
    size: Mapped[int] = mapped_column(Integer, default=0)  # bytes as received


OPEN_JOB_STATES = tuple(s.value for s in JobState if s not in TERMINAL)


class JobRow(Base):
    __tablename__ = "jobs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    study_uid: Mapped[str] = mapped_column(String(64), index=True)
    rule: Mapped[str] = mapped_column(String(64))
    models: Mapped[list[str]] = mapped_column(JSON, nullable=True, default=list)  # in rule order
    state: Mapped[str] = mapped_column(String(16), index=True)
    reason: Mapped[str] = mapped_column(Text, default="")
    input_series: Mapped[list[str]] = mapped_column(JSON, default=list)
    rtstruct_uid: Mapped[str | None] = mapped_column(String(64), nullable=True)
    rtstruct_path: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[float] = mapped_column(Float, index=True)
    stages: Mapped[dict[str, float]] = mapped_column(JSON, default=dict)
    plan: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=True, default=dict)  # JobPlan
    outcome: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=True, default=dict)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")  # runs claimed
    lease_owner: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lease_expires_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    # PNG: the contours over the primary series' middle slices, made when the job ends.
    preview_path: Mapped[str | None] = mapped_column(Text, nullable=True)

    # At most one unfinished job per study and rule, whichever process checks the study.
    __table_args__ = (
        Index(
            "ix_jobs_one_open_per_rule",
            "study_uid",
            "rule",
            unique=True,
            sqlite_where=text(f"state IN {OPEN_JOB_STATES!r}"),
            postgresql_where=text(f"state IN {OPEN_JOB_STATES!r}"),
        ),
    )

    @property
    def job_plan(self) -> JobPlan:
        return JobPlan.model_validate(self.plan or {})

    @property
    def job_outcome(self) -> JobOutcome:
        return JobOutcome.model_validate(self.outcome or {})


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
    lease_owner: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lease_expires_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class AuditRow(Base):
    """Who sent or got what, when, with what outcome. UIDs, AE titles, addresses, counts, model
    names and versions only: never patient names, IDs or birth dates."""

    __tablename__ = "audit"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[float] = mapped_column(Float, index=True)
    # association, received, job, delivery, purge, login, user, destination, echo, action, ...
    event: Mapped[str] = mapped_column(String(32), index=True)
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


class StructureSetRow(Base):
    """An RTSTRUCT sent to us (the clinician-approved structure set coming back): kept apart
    from the studies' images, never routed to a model. ``state``: pending (to be paired),
    comparing (under a lease), compared, unpaired (``reason`` says why), superseded (a later
    version of the same answer was compared)."""

    __tablename__ = "structure_sets"
    sop_instance_uid: Mapped[str] = mapped_column(String(64), primary_key=True)
    study_uid: Mapped[str] = mapped_column(String(64), index=True)
    series_uid: Mapped[str] = mapped_column(String(64))
    frame_of_reference_uid: Mapped[str] = mapped_column(String(64), default="")
    calling_ae: Mapped[str] = mapped_column(String(16), default="")
    received_at: Mapped[float] = mapped_column(Float)
    path: Mapped[str] = mapped_column(Text)
    size: Mapped[int] = mapped_column(Integer, default=0)
    approval_status: Mapped[str] = mapped_column(String(16), default="")
    structure_set_datetime: Mapped[str] = mapped_column(String(32), default="")  # DA + TM
    state: Mapped[str] = mapped_column(String(16), index=True)
    reason: Mapped[str] = mapped_column(Text, default="")
    job_id: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)
    ai_uid: Mapped[str] = mapped_column(String(64), default="")
    compared_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    lease_owner: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lease_expires_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class QaRow(Base):
    """One ROI of an approved structure set compared with the AI structure set (QaRecord)."""

    __tablename__ = "qa"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[int] = mapped_column(Integer, index=True)
    study_uid: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(64), default="")
    model_version: Mapped[str] = mapped_column(String(32), default="")
    roi: Mapped[str] = mapped_column(String(64), default="")
    approved_roi: Mapped[str] = mapped_column(String(64), default="")
    status: Mapped[str] = mapped_column(String(16))
    ai_uid: Mapped[str] = mapped_column(String(64))
    approved_uid: Mapped[str] = mapped_column(String(64), index=True)
    at: Mapped[float] = mapped_column(Float, index=True)
    dice: Mapped[float | None] = mapped_column(Float, nullable=True)
    hd: Mapped[float | None] = mapped_column(Float, nullable=True)
    hd95: Mapped[float | None] = mapped_column(Float, nullable=True)
    msd: Mapped[float | None] = mapped_column(Float, nullable=True)
    surface_dice: Mapped[float | None] = mapped_column(Float, nullable=True)
    apl: Mapped[float | None] = mapped_column(Float, nullable=True)
    volume_ai: Mapped[float | None] = mapped_column(Float, nullable=True)
    volume_approved: Mapped[float | None] = mapped_column(Float, nullable=True)
    volume_change: Mapped[float | None] = mapped_column(Float, nullable=True)
    unchanged: Mapped[bool] = mapped_column(Boolean, default=False)
    tolerance_mm: Mapped[float | None] = mapped_column(Float, nullable=True)
    apl_tolerance_mm: Mapped[float | None] = mapped_column(Float, nullable=True)
    # A later version of the approved structure set answered the same AI set.
    superseded: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")


class AlertRow(Base):
    """An alarm (e.g. a control chart left its limits). ``key`` makes raising it idempotent."""

    __tablename__ = "alerts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(String(255), unique=True)
    kind: Mapped[str] = mapped_column(String(32))  # drift, ...
    severity: Mapped[str] = mapped_column(String(16), default="warning")
    at: Mapped[float] = mapped_column(Float, index=True)
    model: Mapped[str] = mapped_column(String(64), default="")
    model_version: Mapped[str] = mapped_column(String(32), default="")
    roi: Mapped[str] = mapped_column(String(64), default="")
    message: Mapped[str] = mapped_column(Text, default="")
    # open, acknowledged (a person saw it), resolved (its condition ended)
    state: Mapped[str] = mapped_column(String(16), default="open", index=True)
    acknowledged_by: Mapped[str] = mapped_column(String(64), default="")
    acknowledged_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    job_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    destination: Mapped[str] = mapped_column(String(64), default="", server_default="")
    resolved_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    # Sent to the alert sinks: when last, how often; and whether "resolved" was sent.
    notified_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    notified_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    resolved_notified: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")


class IncidentRow(Base):
    """The incident register. Candidates (from the QA loop) wait for a person to accept
    (state open) or dismiss them; ``key`` makes raising a candidate idempotent."""

    __tablename__ = "incidents"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    key: Mapped[str | None] = mapped_column(String(255), unique=True, nullable=True)
    state: Mapped[str] = mapped_column(String(16), index=True)  # candidate open closed dismissed
    severity: Mapped[str] = mapped_column(String(16), default="")
    title: Mapped[str] = mapped_column(Text, default="")
    description: Mapped[str] = mapped_column(Text, default="")
    actions: Mapped[str] = mapped_column(Text, default="")
    job_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    study_uid: Mapped[str] = mapped_column(String(64), default="")
    model: Mapped[str] = mapped_column(String(64), default="")
    model_version: Mapped[str] = mapped_column(String(32), default="")
    roi: Mapped[str] = mapped_column(String(64), default="")
    opened_at: Mapped[float] = mapped_column(Float)
    opened_by: Mapped[str] = mapped_column(String(64), default="")
    decided_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    decided_by: Mapped[str] = mapped_column(String(64), default="")
    closed_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    closed_by: Mapped[str] = mapped_column(String(64), default="")


class UserRow(Base):
    """A console account. ``role``: viewer (reads), operator (acts), admin (also accounts).
    ``password_hash``: argon2id (PHC string), never the password."""

    __tablename__ = "users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    password_hash: Mapped[str] = mapped_column(Text)
    created_at: Mapped[float] = mapped_column(Float)
    failed_logins: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    locked_until: Mapped[float | None] = mapped_column(Float, nullable=True)
    last_login_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")
    # Sessions carry it; bumped on sign-out, password or role change and disabling, which ends
    # every session of the account made before.
    session_epoch: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class DestinationStatusRow(Base):
    """What the echo monitor last saw of a destination, and whether an operator paused it
    (a paused destination gets no deliveries; they wait, their attempts not counted)."""

    __tablename__ = "destination_status"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    up: Mapped[bool | None] = mapped_column(Boolean, nullable=True)  # None: never echoed
    rtt_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    checked_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    last_success_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    down_since: Mapped[float | None] = mapped_column(Float, nullable=True)
    last_error: Mapped[str] = mapped_column(Text, default="", server_default="")
    paused: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")
    paused_by: Mapped[str] = mapped_column(String(64), default="", server_default="")
    paused_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class ComponentRow(Base):
    """A part of a running gateway process and its state, e.g. ``model:taps`` loading, ok or
    failed (``detail`` says why), ``scp`` listening: what /readyz, the overview and the alerts
    read, whichever process wrote it (``owner``)."""

    __tablename__ = "components"
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    state: Mapped[str] = mapped_column(String(16))
    detail: Mapped[str] = mapped_column(Text, default="", server_default="")
    owner: Mapped[str] = mapped_column(String(128), default="", server_default="")
    updated_at: Mapped[float] = mapped_column(Float)


class SelfTestRow(Base):
    """A self-test: the bundled phantom study sent through the whole chain (C-STORE to our own
    SCP, assembly, routing, models, RTSTRUCT) and delivered to ``destination`` only ("": a dry
    run, nothing sent). Its study UID marks the study as a self-test for routing/delivery."""

    __tablename__ = "self_tests"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    study_uid: Mapped[str] = mapped_column(String(64), unique=True)
    destination: Mapped[str] = mapped_column(String(64), default="")
    requested_by: Mapped[str] = mapped_column(String(64), default="")
    started_at: Mapped[float] = mapped_column(Float)
    state: Mapped[str] = mapped_column(String(16))  # sending, running, passed, failed
    detail: Mapped[str] = mapped_column(Text, default="")
    job_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    timings: Mapped[dict[str, float]] = mapped_column(JSON, default=dict)
