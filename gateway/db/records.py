"""Plain records and enums: what the database hands to the pure cores (assembly, routing,
guardrails) and what the stages hand each other. No SQLAlchemy here: the pure cores import this
module, never :mod:`gateway.db.database`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class JobState(str, enum.Enum):
    WAITING = "waiting"  # routed, waiting for its inputs to be complete
    QUEUED = "queued"
    RUNNING = "running"
    DELIVERING = "delivering"
    DONE = "done"
    FAILED = "failed"


TERMINAL = (JobState.DONE, JobState.FAILED)


class DeliveryState(str, enum.Enum):
    PENDING = "pending"
    SENDING = "sending"
    DELIVERED = "delivered"
    FAILED = "failed"  # parked: max attempts reached or permanently rejected


@dataclass(frozen=True)
class SliceGeometry:
    """The geometry attributes of one single-frame image, as recorded at reception."""

    sop_instance_uid: str
    frame_of_reference_uid: str | None
    position: tuple[float, float, float] | None  # ImagePositionPatient
    orientation: tuple[float, ...] | None  # ImageOrientationPatient (6)
    pixel_spacing: tuple[float, float] | None  # (row spacing, column spacing)
    rows: int | None
    columns: int | None
    frames: int | None = None  # NumberOfFrames (multi-frame instances)


@dataclass(frozen=True)
class InstanceRecord:
    """What the Storage SCP records of one received instance."""

    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    path: str
    series_attributes: dict[str, Any]
    geometry: dict[str, Any]
    size: int = 0
    # Salted hash of PatientID + IssuerOfPatientID ("" when not known): never the clear value.
    patient_key: str = ""


@dataclass(frozen=True)
class SeriesInfo:
    series_uid: str
    attributes: dict[str, Any]
    first_received_at: float
    last_received_at: float
    slices: tuple[SliceGeometry, ...] = field(default=())
    paths: dict[str, str] = field(default_factory=dict)  # SOP Instance UID -> spool path
    # (first, last) arrival of the instances held now: a resend moves both.
    received: tuple[float, float] = (0.0, 0.0)
    patient_key: str = ""  # as InstanceRecord's, of the series' first instance; "" not known


@dataclass(frozen=True)
class StudyTimes:
    first_received_at: float
    last_received_at: float


@dataclass(frozen=True)
class StudyInfo:
    study_uid: str
    calling_ae: str
    called_ae: str
    first_received_at: float
    last_received_at: float
    series: tuple[SeriesInfo, ...]
    # Set when the association that sent it last was cut off and none has been released since.
    interrupted_at: float | None = None
    # Associations sending this study right now: while any is open the study is never ready.
    open_associations: int = 0
