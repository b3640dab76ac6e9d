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
    CANCELLED = "cancelled"  # by an operator: never run, delivered or routed again by itself


TERMINAL = (JobState.DONE, JobState.FAILED, JobState.CANCELLED)


class DeliveryState(str, enum.Enum):
    PENDING = "pending"
    SENDING = "sending"
    DELIVERED = "delivered"
    FAILED = "failed"  # parked: max attempts reached or permanently rejected
    CANCELLED = "cancelled"  # its job was cancelled before it was delivered


@dataclass(frozen=True)
class SliceGeometry:
    """The geometry attributes of one slice, as recorded at reception: a single-frame image, or
    frame ``frame`` (1-based) of a multi-frame image (``stack``: its StackID)."""

    sop_instance_uid: str
    frame_of_reference_uid: str | None
    position: tuple[float, float, float] | None  # ImagePositionPatient
    orientation: tuple[float, ...] | None  # ImageOrientationPatient (6)
    pixel_spacing: tuple[float, float] | None  # (row spacing, column spacing)
    rows: int | None
    columns: int | None
    frames: int | None = None  # NumberOfFrames (multi-frame instances)
    frame: int | None = None  # this slice's frame number in a multi-frame instance
    stack: str | None = None

    @property
    def ref(self) -> str:
        """What names this slice: the SOP Instance UID, with ``:<frame>`` for a frame."""
        return (
            self.sop_instance_uid if self.frame is None else f"{self.sop_instance_uid}:{self.frame}"
        )


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
    # One channel of the series' multi-frame instances ("" for the series itself): "#<hash of
    # the channel's attributes>" (see :mod:`gateway.multiframe`, :mod:`gateway.db.image_sets`).
    part: str = ""

    @property
    def key(self) -> str:
        """What names this image set in a job's plan: the Series Instance UID (and its part)."""
        return self.series_uid + self.part

    def frames_of(self, sop_instance_uid: str) -> tuple[int, ...]:
        """The frames of a multi-frame instance that belong to this image set (empty: all of a
        single-frame instance)."""
        return tuple(
            s.frame for s in self.slices if s.sop_instance_uid == sop_instance_uid and s.frame
        )


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


class QaStatus(str, enum.Enum):
    """How an AI ROI fared in the approved structure set."""

    COMPARED = "compared"  # present in both: metrics computed
    DELETED = "deleted"  # an AI ROI the clinician removed
    ADDED = "added"  # an approved ROI with no AI counterpart (listed, not scored)


@dataclass(frozen=True)
class QaRecord:
    """One ROI of one approved structure set compared with the AI structure set it answers.

    Metrics as :class:`gateway.qa.metrics.RoiMetrics` (None where undefined or not scored);
    ``at`` is when the comparison was made (epoch seconds). No patient data."""

    job_id: int
    study_uid: str
    model: str
    model_version: str
    roi: str  # the clinic ROI name of the AI structure set ("" for an added ROI)
    approved_roi: str  # its name in the approved set ("" when deleted)
    status: QaStatus
    ai_uid: str  # SOP Instance UID of the AI RTSTRUCT
    approved_uid: str  # SOP Instance UID of the approved RTSTRUCT
    at: float
    dice: float | None = None
    hd: float | None = None
    hd95: float | None = None
    msd: float | None = None
    surface_dice: float | None = None
    apl: float | None = None
    volume_ai: float | None = None
    volume_approved: float | None = None
    volume_change: float | None = None
    unchanged: bool = False
    tolerance_mm: float | None = None
    apl_tolerance_mm: float | None = None
    id: int | None = None


class StructureSetState(str, enum.Enum):
    PENDING = "pending"  # received, to be paired and compared
    COMPARING = "comparing"  # under a lease
    COMPARED = "compared"
    UNPAIRED = "unpaired"  # kept; the reason says why it answers no AI structure set
    SUPERSEDED = "superseded"  # a later version answering the same AI structure set counts


@dataclass(frozen=True)
class StructureSetRecord:
    """An RTSTRUCT sent to us (e.g. the approved structure set from the planning system)."""

    sop_instance_uid: str
    study_uid: str
    series_uid: str
    frame_of_reference_uid: str
    calling_ae: str
    path: str
    size: int
    approval_status: str  # APPROVED, UNAPPROVED, REJECTED or "" (absent)
    structure_set_datetime: str  # StructureSetDate + StructureSetTime ("" when absent)
    received_at: float = 0.0
    state: StructureSetState = StructureSetState.PENDING
    reason: str = ""
    job_id: int | None = None
    ai_uid: str = ""
    compared_at: float | None = None
