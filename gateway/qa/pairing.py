"""Which AI structure set an approved structure set answers, and which ROI is which (pure).

An approved RTSTRUCT answers the AI structure set of a finished job when it is of the same
study, in the same frame of reference, and its contours lie on the AI set's image series (the
primary series of the job). ROIs are matched by clinic name: the config's ``roi_names``, TG-263
synonyms, and names compared without case, spaces or punctuation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pydicom.dataset import Dataset

from gateway.config import RoiSpec
from gateway.contour.structures import canonical_name
from gateway.db.records import StructureSetRecord

# Which version of several answering the same AI set counts: approved over unapproved, then
# the latest StructureSetDate/Time, then the last received.
_ROIS = "StructureSetROISequence"
_APPROVAL_RANK = {"APPROVED": 2, "": 1, "UNAPPROVED": 0}


def rank(rec: StructureSetRecord) -> tuple[int, str, float]:
    return (
        _APPROVAL_RANK.get(rec.approval_status, -1),
        rec.structure_set_datetime,
        rec.received_at,
    )


@dataclass(frozen=True)
class AiSet:
    """The AI structure set of one finished job."""

    job_id: int
    rtstruct_uid: str
    study_uid: str
    frame_of_reference_uid: str
    reference_series: str
    reference_instances: frozenset[str]  # SOP Instance UIDs of the reference series
    models: frozenset[str] = frozenset()  # provenance labels ("name version") of its ROIs
    reference_key: str = ""  # the image set (series, or a channel of its frames) it was made on

    def __post_init__(self) -> None:
        if not self.reference_key:
            object.__setattr__(self, "reference_key", self.reference_series)


@dataclass(frozen=True)
class Answer:
    """What an approved structure set refers to."""

    sop_instance_uid: str
    study_uid: str
    frame_of_reference_uid: str
    approval_status: str
    contour_images: frozenset[str]  # ReferencedSOPInstanceUID of every contour
    referenced_series: frozenset[str]  # RTReferencedSeriesSequence
    # What it says of its origin: ROIGenerationDescription, StructureSetDescription and the
    # contributing equipment's software versions (kept by planning systems that keep them).
    origin: str = ""

    @classmethod
    def of(cls, ds: Dataset, rec: StructureSetRecord) -> Answer:
        images: set[str] = set()
        for roi_contour in ds.get("ROIContourSequence", []):
            for contour in roi_contour.get("ContourSequence", []):
                for image in contour.get("ContourImageSequence", []):
                    images.add(str(image.get("ReferencedSOPInstanceUID", "")))
        series: set[str] = set()
        for ref in ds.get("ReferencedFrameOfReferenceSequence", []):
            for study in ref.get("RTReferencedStudySequence", []):
                for s in study.get("RTReferencedSeriesSequence", []):
                    series.add(str(s.get("SeriesInstanceUID", "")))
        told = [str(ds.get("StructureSetDescription", ""))]
        told += [str(r.get("ROIGenerationDescription", "")) for r in ds.get(_ROIS, [])]
        for item in ds.get("ContributingEquipmentSequence", []):
            told.append(str(item.get("SoftwareVersions", "")))
        return cls(
            rec.sop_instance_uid,
            rec.study_uid,
            rec.frame_of_reference_uid,
            rec.approval_status,
            frozenset(images - {""}),
            frozenset(series - {""}),
            "\n".join(told),
        )


def pair(answer: Answer, candidates: Sequence[AiSet]) -> tuple[AiSet | None, str]:
    """The AI set this approved set answers, or None and the reason in words.

    Of several AI sets on the same series (the study was sent again, perhaps after a model
    upgrade), the one whose models (name and version) the approved set still names; when it
    names none, the latest one, unless they came from different model versions: then which was
    edited cannot be told, and the set is not paired."""
    if answer.approval_status == "REJECTED":
        return None, "its ApprovalStatus is REJECTED: not compared"
    if any(c.rtstruct_uid == answer.sop_instance_uid for c in candidates):
        return None, "it is the AI structure set AIRCON sent (same SOP Instance UID), not an edit"
    if not candidates:
        return None, f"AIRCON sent no structure set for study {answer.study_uid}"
    same_frame = [
        c for c in candidates if c.frame_of_reference_uid == answer.frame_of_reference_uid
    ]
    if not same_frame:
        theirs = answer.frame_of_reference_uid or "none"
        ours = ", ".join(sorted({c.frame_of_reference_uid for c in candidates}))
        return None, f"frame of reference {theirs} is not the AI structure set's ({ours})"
    on_series = [c for c in same_frame if _on_series(answer, c)]
    if not on_series:
        ours = ", ".join(sorted({c.reference_series for c in same_frame}))
        return None, f"its contours are not on the AI structure set's image series ({ours})"
    if len({c.rtstruct_uid for c in on_series}) == 1:
        return max(on_series, key=lambda c: c.job_id), ""
    named = [c for c in on_series if c.models and all(m in answer.origin for m in c.models)]
    if named:
        return max(named, key=lambda c: c.job_id), ""
    if len({c.models for c in on_series}) == 1:
        return max(on_series, key=lambda c: c.job_id), ""
    jobs = ", ".join(f"job {c.job_id} ({', '.join(sorted(c.models))})" for c in on_series)
    return None, (
        f"AI structure sets of several model versions are on this series ({jobs}) and the "
        "approved set names none of them: which was edited cannot be told"
    )


def _on_series(answer: Answer, ai: AiSet) -> bool:
    if answer.contour_images:
        return answer.contour_images <= ai.reference_instances
    return ai.reference_series in answer.referenced_series


@dataclass(frozen=True)
class RoiMatch:
    pairs: dict[str, str]  # AI ROI name -> approved ROI name
    deleted: tuple[str, ...]  # AI ROIs absent (or without contours) in the approved set
    added: tuple[str, ...]  # approved ROIs with no AI counterpart


def match_rois(
    ai: Sequence[str], approved: Sequence[str], roi_names: Mapping[str, RoiSpec]
) -> RoiMatch:
    """Pair ROI names: the same name first, then the same clinic name (see
    :func:`gateway.contour.structures.canonical_name`). Each approved ROI pairs at most once."""
    left = list(approved)
    pairs: dict[str, str] = {}
    for name in ai:
        if name in left:
            pairs[name] = name
            left.remove(name)
    for name in ai:
        if name in pairs:
            continue
        key = canonical_name(name, roi_names)
        match = next((a for a in left if canonical_name(a, roi_names) == key), None)
        if match is not None:
            pairs[name] = match
            left.remove(match)
    deleted = tuple(n for n in ai if n not in pairs)
    return RoiMatch(pairs, deleted, tuple(left))
