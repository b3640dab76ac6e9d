"""Pure DICOM SEG building: the structures' masks on a volume's series -> a Segmentation Dataset.

highdicom builds the object; this module decides what goes in: one segment per structure with
voxels (empty ones left out, as in the RTSTRUCT), the clinic ROI name as SegmentLabel, its colour
as RecommendedDisplayCIELabValue, its codes (``RoiSpec.code`` / ``category``), and provenance:
per segment the model (AlgorithmIdentificationSequence: name, version, family Artificial
Intelligence, the weights SHA-256 as a parameter), per model a Contributing Equipment item, and
the review notice in ContentDescription and ImageComments.

A structure without codes gets the generic :data:`GENERIC_CATEGORY` / :data:`GENERIC_TYPE`
(Anatomical Structure / Tissue): any clinic label works, and SegmentLabel still names it.

Source references. A classic series (``volume.frames == ()``): every SEG frame references the
single-frame instance of its slice. A multi-frame primary (``volume.frames[k]`` = the frame of
slice k in one Enhanced / Legacy Converted Enhanced instance, which may hold other frames too,
e.g. other Dixon channels at the same positions): highdicom is given a header-only stand-in
whose frame k+1 is slice k, and every SEG frame's ReferencedFrameNumber is then mapped to the
real frame, ``volume.frames[k]``. Matching by position instead (what highdicom does with
``plane_positions``) would also reference every other frame at that position. No pixel data is
read or copied.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime

import highdicom as hd
import numpy as np
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.tag import BaseTag
from pydicom.valuerep import DA, DT, TM

from gateway.contour.rtstruct import MANUFACTURER_MODEL_NAME, Structure, gateway_version
from gateway.errors import ModelError
from gateway.imaging import Volume
from gateway.job import Provenance
from gateway.segment.spec import CodeSpec
from gateway.uids import derive_uid

logger = logging.getLogger(__name__)

GENERIC_CATEGORY = CodeSpec(scheme="SCT", value="91723000", meaning="Anatomical Structure")
GENERIC_TYPE = CodeSpec(scheme="SCT", value="85756007", meaning="Tissue")
CONTENT_LABEL = "AI_UNAPPROVED"
CONTENT_DESCRIPTION = "AI segmentation, not reviewed: review before clinical use"
SERIES_NUMBER = 2  # the RTSTRUCT's is 1
DEVICE_SERIAL_NUMBER = "1"  # Type 1 in Enhanced General Equipment; software has none
MAX_FRACTIONAL_VALUE = 255

# Patient/study attributes highdicom reads from the first source (Type 2: empty when absent).
_TYPE2_FROM_SOURCE = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)
_PERSON_NAMES = ("PatientName", "ReferringPhysicianName")
_PIXELS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_GEOMETRY = (
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "PixelSpacing",
    "SliceThickness",
    "SpacingBetweenSlices",
    "NumberOfFrames",
    "SharedFunctionalGroupsSequence",
    "PerFrameFunctionalGroupsSequence",
)


def seg_uids(
    uid_root: str,
    study_uid: str,
    input_series_uids: Sequence[str],
    provenances: Provenance | Sequence[Provenance],
    *,
    fractional: bool = False,
) -> tuple[str, str]:
    """Deterministic (SOPInstanceUID, SeriesInstanceUID) of one SEG: the same study, input series
    and models (names and versions) always give the same UIDs, never those of the RTSTRUCT
    (:func:`gateway.contour.rtstruct.rtstruct_uids`). A fractional SEG of the same inputs is
    another object, so it gets other UIDs."""
    provenances = [provenances] if isinstance(provenances, Provenance) else list(provenances)
    models = sorted((p.model_name, p.model_version) for p in provenances)
    parts = (study_uid, *sorted(input_series_uids), *(x for m in models for x in m))
    kind = "seg-fractional" if fractional else "seg"
    return derive_uid(uid_root, kind, *parts), derive_uid(uid_root, f"{kind}-series", *parts)


# ---------------------------------------------------------------------------------------------
# Source headers for highdicom (new datasets: the volume's headers are never changed)


def _header(ds: Dataset, drop: Sequence[str]) -> Dataset:
    """A new dataset with ``ds``'s elements except ``drop``, taken as they are (raw elements stay
    undecoded): attributes set on it later never reach ``ds``."""
    dropped = {tag_for_keyword(k) for k in drop}
    out = Dataset()
    for tag in ds.keys():
        if tag not in dropped:
            out[BaseTag(tag)] = ds.get_item(tag)
    return out


def _fill_type2(ds: Dataset) -> None:
    """Empty Type 2 attributes where absent; person names emptied (highdicom's name check puts
    a name it doubts into a warning: :func:`build_seg` sets them from the source afterwards)."""
    for keyword in _TYPE2_FROM_SOURCE:
        if keyword in _PERSON_NAMES and keyword in ds:
            del ds[keyword]
        if keyword not in ds:
            setattr(ds, keyword, "")


def _floats(value: Sequence[object]) -> list[float]:
    return [float(str(v)) for v in value]


def _slice_thickness(volume: Volume) -> float:
    """SliceThickness of the first slice, else of the multi-frame's shared Pixel Measures, else
    the slice spacing."""
    first = volume.datasets[0]
    given = first.get("SliceThickness")
    if given in (None, "") and "SharedFunctionalGroupsSequence" in first:
        measures = first.SharedFunctionalGroupsSequence[0].get("PixelMeasuresSequence")
        given = measures[0].get("SliceThickness") if measures else None
    return float(given) if given not in (None, "") else float(volume.image.GetSpacing()[2])


def _classic_sources(volume: Volume) -> list[Dataset]:
    """One header per slice, with the first slice's orientation (the volume is parallel within
    tolerance; highdicom wants them equal) and a slice thickness (highdicom reads it)."""
    orientation = _floats(volume.datasets[0].ImageOrientationPatient)
    thickness = _slice_thickness(volume)
    out = []
    for ds in volume.datasets:
        header = _header(ds, _PIXELS + ("ImageOrientationPatient", "SliceThickness"))
        header.ImageOrientationPatient = orientation
        header.SliceThickness = thickness
        out.append(header)
    _fill_type2(out[0])
    return out


def _multiframe_source(volume: Volume) -> Dataset:
    """A header-only stand-in for the multi-frame instance whose frame k+1 is slice k."""
    first = volume.datasets[0]
    if len({str(ds.SOPInstanceUID) for ds in volume.datasets}) != 1:
        raise ValueError("a multi-frame volume's slices must come from one instance")
    source = _header(first, _PIXELS + _GEOMETRY)
    source.NumberOfFrames = len(volume.datasets)
    shared = Dataset()
    shared.PlaneOrientationSequence = hd.PlaneOrientationSequence(
        "PATIENT", _floats(first.ImageOrientationPatient)
    )
    shared.PixelMeasuresSequence = hd.PixelMeasuresSequence(
        _floats(first.PixelSpacing), _slice_thickness(volume)
    )
    source.SharedFunctionalGroupsSequence = [shared]
    frames = []
    for ds in volume.datasets:
        item = Dataset()
        item.PlanePositionSequence = hd.PlanePositionSequence(
            "PATIENT", _floats(ds.ImagePositionPatient)
        )
        frames.append(item)
    source.PerFrameFunctionalGroupsSequence = frames
    _fill_type2(source)
    return source


def _refer_to_real_frames(seg: Dataset, frames: Sequence[int]) -> None:
    """Stand-in frame k+1 -> the instance's frame ``frames[k]`` in every SEG frame's
    DerivationImageSequence. highdicom shares one item between the frames of the segments of
    one plane: each is mapped once."""
    done: set[int] = set()
    for item in seg.PerFrameFunctionalGroupsSequence:
        for derivation in item.get("DerivationImageSequence", []):
            for source in derivation.get("SourceImageSequence", []):
                if "ReferencedFrameNumber" in source and id(source) not in done:
                    done.add(id(source))
                    source.ReferencedFrameNumber = frames[int(source.ReferencedFrameNumber) - 1]


# ---------------------------------------------------------------------------------------------
# Segments and provenance


def _concept(code: CodeSpec) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(value=code.value, scheme_designator=code.scheme, meaning=code.meaning)


def _segment(number: int, st: Structure) -> hd.seg.SegmentDescription:
    p = st.provenance
    algorithm = hd.AlgorithmIdentificationSequence(
        name=p.model_name,
        family=codes.DCM.ArtificialIntelligence,
        version=p.model_version,
        source="AIRCON",
        parameters={"weights SHA-256": p.weights_sha256 or "unknown"},
    )
    return hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=st.roi.name,
        segmented_property_category=_concept(st.roi.category or GENERIC_CATEGORY),
        segmented_property_type=_concept(st.roi.code or GENERIC_TYPE),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
        display_color=hd.color.CIELabColor.from_rgb(*st.roi.color),
    )


def _equipment(p: Provenance, manufacturer: str, when: datetime) -> hd.ContributingEquipment:
    return hd.ContributingEquipment(
        manufacturer=manufacturer,
        purpose_of_reference=codes.DCM.ProcessingEquipment,
        manufacturer_model_name=p.model_name[:64],
        software_versions=[p.model_version, f"AIRCON {gateway_version()}"],
        contribution_datetime=when.strftime("%Y%m%d%H%M%S"),
        contribution_description=(
            f"Automatic segmentation by {p.label}, weights SHA-256 {p.weights_sha256 or 'unknown'}"
        )[:1024],
    )


def _comments(provenances: Sequence[Provenance], skipped: Sequence[str]) -> str:
    models = "; ".join(
        f"model {p.model_name} version {p.model_version}, "
        f"weights SHA-256 {p.weights_sha256 or 'unknown'}"
        for p in provenances
    )
    text = (
        "AI-generated segmentation, not reviewed: review and approve before clinical use. "
        f"{models[0].upper()}{models[1:]}; AIRCON {gateway_version()}."
    )
    if skipped:
        text += f" No voxels, not included: {', '.join(skipped)}."
    return text


# ---------------------------------------------------------------------------------------------
# The builder


def build_seg(
    volume: Volume,
    structures: Sequence[Structure],
    *,
    uid_root: str,
    manufacturer: str,
    series_description: str,
    input_series_uids: Sequence[str],
    fractional: bool = False,
    now: datetime | None = None,
) -> Dataset:
    """Build one DICOM Segmentation of ``structures`` (from one or several models) on
    ``volume``'s series.

    Each mask is a boolean array of the shape of ``sitk.GetArrayFromImage(volume.image)``
    ``(z, y, x)``; slice k lies on ``volume.datasets[k]`` (and frame ``volume.frames[k]`` of a
    multi-frame primary). BINARY by default; ``fractional``: FRACTIONAL PROBABILITY with the
    masks as 0/1 (stored 0/255). Structures without voxels are left out (logged, named in
    ImageComments); :class:`ModelError` when none has any. Frames without voxels are omitted.
    UIDs are :func:`seg_uids` of the Study UID, ``input_series_uids`` (all series the models
    read) and the models. The result has ``file_meta`` set
    (:func:`gateway.contour.rtstruct.write_dataset` writes it).
    """
    datasets = volume.datasets
    expected = (len(datasets), int(datasets[0].Rows), int(datasets[0].Columns))
    for st in structures:
        if st.mask.shape != expected:
            raise ValueError(f"mask shape {st.mask.shape} differs from the volume {expected}")
    if volume.frames and len(volume.frames) != len(datasets):
        raise ValueError("volume.frames must give one frame number per slice")
    when = now or datetime.now()
    date, time = when.strftime("%Y%m%d"), when.strftime("%H%M%S")
    study_uid = volume.study_instance_uid
    kept = [st for st in structures if st.mask.any()]
    skipped = [st.roi.name for st in structures if not st.mask.any()]
    if skipped:
        logger.warning(
            "study %s: SEG segments without voxels left out: %s", study_uid, ", ".join(skipped)
        )
    if not kept:
        raise ModelError(f"study {study_uid}: the masks hold no voxel of any segment")
    provenances = list(dict.fromkeys(st.provenance for st in kept))
    sop_uid, series_uid = seg_uids(
        uid_root, study_uid, input_series_uids, provenances, fractional=fractional
    )
    sources = [_multiframe_source(volume)] if volume.frames else _classic_sources(volume)
    pixels = np.stack([np.asarray(st.mask, dtype=bool) for st in kept], axis=-1)
    kind = hd.seg.SegmentationTypeValues
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=pixels,
        segmentation_type=kind.FRACTIONAL if fractional else kind.BINARY,
        segment_descriptions=[_segment(i + 1, st) for i, st in enumerate(kept)],
        series_instance_uid=series_uid,
        series_number=SERIES_NUMBER,
        sop_instance_uid=sop_uid,
        instance_number=1,
        manufacturer=manufacturer,
        manufacturer_model_name=MANUFACTURER_MODEL_NAME,
        software_versions=gateway_version(),
        device_serial_number=DEVICE_SERIAL_NUMBER,
        fractional_type=hd.seg.SegmentationFractionalTypeValues.PROBABILITY,
        max_fractional_value=MAX_FRACTIONAL_VALUE,
        content_description=CONTENT_DESCRIPTION,
        content_label=CONTENT_LABEL,
        series_description=series_description,
        series_date=date,
        series_time=time,
        content_date=date,
        content_time=time,
        contributing_equipment=[_equipment(p, manufacturer, when) for p in provenances],
    )
    if volume.frames:
        _refer_to_real_frames(seg, volume.frames)
    for keyword in _PERSON_NAMES:
        setattr(seg, keyword, datasets[0].get(keyword, ""))
    seg.InstanceCreationDate, seg.InstanceCreationTime = DA(date), TM(time)
    for item in seg.ContributingEquipmentSequence:  # highdicom's own item says "now"
        if item.PurposeOfReferenceCodeSequence[0].CodeValue == "109102":
            item.ContributionDateTime = DT(when.strftime("%Y%m%d%H%M%S"))
    seg.ImageComments = _comments(provenances, skipped)
    # highdicom draws a random DimensionOrganizationUID: derive it, so the same inputs give the
    # same object.
    dimensions = derive_uid(uid_root, "seg-dimensions", sop_uid)
    for item in (*seg.DimensionOrganizationSequence, *seg.DimensionIndexSequence):
        item.DimensionOrganizationUID = dimensions
    out = Dataset(seg)  # a plain dataset: the highdicom object's frame look-ups predate the fix
    out.file_meta = seg.file_meta
    return out
