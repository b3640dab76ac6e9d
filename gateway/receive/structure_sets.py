"""RTSTRUCTs sent to us: the clinician-approved structure set coming back from the planning
system. Described here (UIDs, approval, date; no patient data) and kept apart from the images:
a structure set is never part of a study's inputs and never routed to a model."""

from __future__ import annotations

from pydicom.dataset import Dataset

from gateway.db.records import StructureSetRecord
from gateway.errors import InvalidInput
from gateway.uids import is_valid_uid

RT_STRUCTURE_SET_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"


def _text(ds: Dataset, keyword: str, limit: int = 64) -> str:
    try:
        value = ds.get(keyword)
    except Exception:  # a malformed element must not take the handler down
        return ""
    return "" if value is None else str(value).strip()[:limit]


def frame_of_reference(ds: Dataset) -> str:
    """The frame of reference the contours are in (the first referenced one)."""
    try:
        for ref in ds.get("ReferencedFrameOfReferenceSequence", []):
            uid = str(ref.get("FrameOfReferenceUID", ""))
            if is_valid_uid(uid):
                return uid
    except Exception:
        return ""
    return ""


def describe_structure_set(ds: Dataset, calling_ae: str, path: str = "") -> StructureSetRecord:
    """Raises InvalidInput when a required UID is missing or invalid."""
    uids = {}
    for kw in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        value = _text(ds, kw)
        if not is_valid_uid(value):
            raise InvalidInput(f"{kw} is missing or not a valid UID")
        uids[kw] = value
    approval = _text(ds, "ApprovalStatus", 16).upper()
    when = (_text(ds, "StructureSetDate", 8) + _text(ds, "StructureSetTime", 16)).strip()
    return StructureSetRecord(
        sop_instance_uid=uids["SOPInstanceUID"],
        study_uid=uids["StudyInstanceUID"],
        series_uid=uids["SeriesInstanceUID"],
        frame_of_reference_uid=frame_of_reference(ds),
        calling_ae=calling_ae,
        path=path,
        size=0,
        approval_status=approval if approval in ("APPROVED", "UNAPPROVED", "REJECTED") else "",
        structure_set_datetime=when,
    )
