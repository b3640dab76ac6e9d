"""Pure RTSTRUCT building: label map + source series + config -> an RT Structure Set Dataset.

Contours follow the pixel EDGES of the label map (marching squares at level 0.5 on a
zero-padded slice), so a planning system that fills a contour by pixel centres gets back exactly
the voxels of the label map. rt-utils provides the structure-set scaffolding (patient, study and
referenced-series modules); everything it gets wrong for us (UIDs, contour points, DS lengths,
missing Type 1/2 attributes, provenance) is set here.
"""

from __future__ import annotations

import importlib.metadata
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from io import BytesIO
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    ExplicitVRLittleEndian,
    RTStructureSetStorage,
)
from rt_utils import ds_helper
from skimage.measure import find_contours

from gateway.config import RoiSpec, RtstructConfig
from gateway.durable import durable_write, make_dirs
from gateway.errors import ModelError
from gateway.grid import pixel_to_patient
from gateway.imaging import Volume
from gateway.job import Provenance
from gateway.multiframe import frame_reference, references
from gateway.uids import derive_uid

logger = logging.getLogger(__name__)

MANUFACTURER_MODEL_NAME = "AIRCON gateway"
_DS_DECIMALS = 4  # 0.1 µm: far below any pixel, and "-12345.6789" fits DS's 16 characters
_TYPE2_FROM_SOURCE = (
    "ReferringPhysicianName",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "PositionReferenceIndicator",
)
# Patient/study attributes carried over when present (Type 3, or 1C on PatientIdentityRemoved).
_OPTIONAL_FROM_SOURCE = (
    "StudyDescription",
    "IssuerOfPatientID",
    "PatientIdentityRemoved",
    "DeidentificationMethod",
    "DeidentificationMethodCodeSequence",
)
_SCAFFOLD_NEEDS = ("StudyDate", "StudyTime", "StudyID")


def gateway_version() -> str:
    try:
        return importlib.metadata.version("aircon")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


# ---------------------------------------------------------------------------------------------
# Contours


def format_ds(value: float) -> str:
    """A DS string of at most 16 characters: rounded to 1e-4 mm, trailing zeros stripped."""
    text = f"{round(float(value), _DS_DECIMALS):.{_DS_DECIMALS}f}".rstrip("0").rstrip(".")
    text = "0" if text in ("-0", "") else text
    if len(text) > 16:
        raise ValueError(f"coordinate {value} does not fit a DS value")
    return text


def _drop_collinear(points: np.ndarray) -> np.ndarray:
    """Remove vertices that lie on the straight line through their neighbours (closed ring)."""
    prev = np.roll(points, 1, axis=0)
    nxt = np.roll(points, -1, axis=0)
    cross = (points[:, 0] - prev[:, 0]) * (nxt[:, 1] - points[:, 1]) - (
        points[:, 1] - prev[:, 1]
    ) * (nxt[:, 0] - points[:, 0])
    keep = np.abs(cross) > 1e-9
    return points[keep] if np.count_nonzero(keep) >= 3 else points


def slice_contours(mask: np.ndarray) -> list[np.ndarray]:
    """Closed contours along the pixel edges of a 2-D boolean mask indexed ``(row, column)``.

    Returns one ``(n, 2)`` array of ``(row, column)`` pixel coordinates per outer or hole
    contour, without repeating the first point. Pixel centres are at integer coordinates, so
    the even-odd fill by pixel centres of all contours reproduces ``mask``.
    """
    padded = np.pad(mask.astype(np.float32), 1)
    rings = []
    for contour in find_contours(padded, 0.5):
        ring = contour[:-1] - 1.0 if np.allclose(contour[0], contour[-1]) else contour - 1.0
        if len(ring) >= 3:
            rings.append(_drop_collinear(ring))
    return rings


def _contour_item(points: np.ndarray, ds: Dataset, number: int, frame: int | None) -> Dataset:
    image = frame_reference(ds, frame)
    item = Dataset()
    item.ContourImageSequence = DicomSequence([image])
    item.ContourGeometricType = "CLOSED_PLANAR"
    item.NumberOfContourPoints = len(points)
    item.ContourNumber = number
    item.ContourData = [format_ds(v) for v in points.ravel()]
    return item


def contour_items(
    mask: np.ndarray, datasets: Sequence[Dataset], frames: Sequence[int] = ()
) -> list[Dataset]:
    """Contour Sequence items for a boolean mask ``(z, y, x)`` whose slice k is ``datasets[k]``
    (frame ``frames[k]`` of a multi-frame image: its reference carries ReferencedFrameNumber)."""
    items: list[Dataset] = []
    for k in (int(i) for i in np.flatnonzero(mask.any(axis=(1, 2)))):
        frame = frames[k] if frames else None
        for ring in slice_contours(mask[k]):
            points = pixel_to_patient(datasets[k], ring)
            items.append(_contour_item(points, datasets[k], len(items) + 1, frame))
    return items


# ---------------------------------------------------------------------------------------------
# Modules


def _scaffold(datasets: Sequence[Dataset], frames: Sequence[int] = ()) -> Dataset:
    """rt-utils' structure set modules (patient, study, referenced frame of reference and
    series). Not its ``create_rtstruct_dataset``: that starts from a FileDataset with
    ``is_little_endian`` / ``is_implicit_VR`` set, deprecated in pydicom 3 (gone in 4), and every
    attribute of that base is set by :func:`build_structure_set` anyway."""
    first = Dataset()
    first.update(datasets[0])
    for keyword in _SCAFFOLD_NEEDS:
        if keyword not in first:
            setattr(first, keyword, "")
    series = [first, *datasets[1:]]
    out = Dataset()
    ds_helper.add_study_and_series_information(out, series)
    ds_helper.add_patient_information(out, series)
    ds_helper.add_refd_frame_of_ref_sequence(out, series)
    # One Contour Image item per slice; a frame of a multi-frame image with its frame number.
    referenced = out.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0]
    referenced.RTReferencedSeriesSequence[0].ContourImageSequence = references(datasets, frames)
    return out


def _copy_from_source(ds: Dataset, source: Dataset) -> None:
    for keyword in _TYPE2_FROM_SOURCE:
        setattr(ds, keyword, source.get(keyword, ""))
    for keyword in _OPTIONAL_FROM_SOURCE:
        if keyword in source:
            setattr(ds, keyword, source.get(keyword))
        elif keyword in ds:
            delattr(ds, keyword)
    ds.SpecificCharacterSet = source.get("SpecificCharacterSet", "ISO_IR 100")
    # rt-utils writes its own InstitutionName and empty Type 3 patient attributes.
    for keyword in ("InstitutionName", "PatientAge", "PatientSize", "PatientWeight"):
        if source.get(keyword):
            setattr(ds, keyword, source.get(keyword))
        elif keyword in ds:
            delattr(ds, keyword)


def _description(provenances: Sequence[Provenance], skipped: Sequence[str]) -> str:
    models = "; ".join(
        f"model {p.model_name} version {p.model_version}, "
        f"weights SHA-256 {p.weights_sha256 or 'unknown'}"
        for p in provenances
    )
    text = (
        "AI-generated contours, not reviewed: review and approve before clinical use. "
        f"{models[0].upper()}{models[1:]}; AIRCON {gateway_version()}."
    )
    if skipped:
        text += f" No voxels, not included: {', '.join(skipped)}."
    return text


def _contributing_equipment(provenance: Provenance, cfg: RtstructConfig, when: str) -> Dataset:
    purpose = Dataset()
    purpose.CodeValue = "109102"
    purpose.CodingSchemeDesignator = "DCM"
    purpose.CodeMeaning = "Processing Equipment"
    item = Dataset()
    item.PurposeOfReferenceCodeSequence = DicomSequence([purpose])
    item.Manufacturer = cfg.manufacturer
    item.ManufacturerModelName = provenance.model_name[:64]
    item.SoftwareVersions = [provenance.model_version, f"AIRCON {gateway_version()}"]
    item.ContributionDateTime = when
    item.ContributionDescription = (
        f"Automatic segmentation by {provenance.label}, "
        f"weights SHA-256 {provenance.weights_sha256 or 'unknown'}"
    )[:1024]
    return item


def _roi_items(
    number: int, spec: RoiSpec, frame_uid: str, provenance: Provenance
) -> tuple[Dataset, Dataset]:
    roi = Dataset()
    roi.ROINumber = number
    roi.ReferencedFrameOfReferenceUID = frame_uid
    roi.ROIName = spec.name
    roi.ROIGenerationAlgorithm = "AUTOMATIC"
    roi.ROIGenerationDescription = provenance.label[:64]
    observation = Dataset()
    observation.ObservationNumber = number
    observation.ReferencedROINumber = number
    observation.RTROIInterpretedType = spec.type
    observation.ROIInterpreter = ""
    return roi, observation


def rtstruct_uids(
    cfg: RtstructConfig,
    study_uid: str,
    input_series_uids: Sequence[str],
    provenance: Provenance | Sequence[Provenance],
) -> tuple[str, str]:
    """Deterministic (SOPInstanceUID, SeriesInstanceUID) for one structure set: the same study,
    input series and models (names and versions) always give the same UIDs."""
    provenances = [provenance] if isinstance(provenance, Provenance) else list(provenance)
    models = sorted((p.model_name, p.model_version) for p in provenances)
    parts = (study_uid, *sorted(input_series_uids), *(x for m in models for x in m))
    return (
        derive_uid(cfg.uid_root, "rtstruct", *parts),
        derive_uid(cfg.uid_root, "rtstruct-series", *parts),
    )


# ---------------------------------------------------------------------------------------------
# The builder


@dataclass(frozen=True)
class Structure:
    """One ROI of a structure set: its voxels on the referenced series' grid (bool ``(z, y,
    x)``), its clinic name, colour and type, and the model that made it."""

    mask: np.ndarray
    roi: RoiSpec
    provenance: Provenance


def build_rtstruct(
    volume: Volume,
    label_map: np.ndarray,
    rois: Mapping[int, RoiSpec],
    provenance: Provenance,
    cfg: RtstructConfig,
    *,
    input_series_uids: Sequence[str],
    now: datetime | None = None,
) -> Dataset:
    """Build an RT Structure Set for one model's ``label_map`` on ``volume``'s series.

    ``label_map`` is an integer array ``(z, y, x)``, the same shape and order as
    ``sitk.GetArrayFromImage(volume.image)``; ``rois`` maps label values to ROI specs (other
    values are ignored). See :func:`build_structure_set`.
    """
    structures = [
        Structure(label_map == label, spec, provenance) for label, spec in sorted(rois.items())
    ]
    return build_structure_set(
        volume, structures, cfg, input_series_uids=input_series_uids, now=now
    )


def build_structure_set(
    volume: Volume,
    structures: Sequence[Structure],
    cfg: RtstructConfig,
    *,
    input_series_uids: Sequence[str],
    now: datetime | None = None,
) -> Dataset:
    """Build one RT Structure Set holding ``structures`` (from one or several models) on
    ``volume``'s series.

    Each mask is a boolean array of the shape of ``sitk.GetArrayFromImage(volume.image)``. Each
    ROI's ROIGenerationDescription names its model and version; every model appears in
    ContributingEquipmentSequence and StructureSetDescription. ROIs without voxels are left out
    (logged and named in StructureSetDescription); :class:`ModelError` is raised when no ROI has
    any voxel. ``input_series_uids`` are all series the models read (they determine the UIDs
    with the Study UID and the models' names and versions). The result has ``file_meta`` set.
    """
    datasets = volume.datasets
    expected = (len(datasets), int(datasets[0].Rows), int(datasets[0].Columns))
    for st in structures:
        if st.mask.shape != expected:
            raise ValueError(f"label map shape {st.mask.shape} differs from the volume {expected}")
    when = now or datetime.now()
    study_uid = volume.study_instance_uid
    frame_uid = volume.frame_of_reference_uid
    provenances = list(dict.fromkeys(st.provenance for st in structures))

    ds = _scaffold(datasets, volume.frames)
    _copy_from_source(ds, datasets[0])
    sop_uid, series_uid = rtstruct_uids(cfg, study_uid, input_series_uids, provenances)
    ds.SOPClassUID = RTStructureSetStorage
    ds.SOPInstanceUID = sop_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = frame_uid
    ds.Modality = "RTSTRUCT"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.OperatorsName = ""
    date, time = when.strftime("%Y%m%d"), when.strftime("%H%M%S")
    for prefix in ("InstanceCreation", "StructureSet", "Series"):
        setattr(ds, f"{prefix}Date", date)
        setattr(ds, f"{prefix}Time", time)
    ds.Manufacturer = cfg.manufacturer
    ds.ManufacturerModelName = MANUFACTURER_MODEL_NAME
    ds.SoftwareVersions = gateway_version()
    ds.SeriesDescription = cfg.series_description
    ds.StructureSetLabel = cfg.structure_set_label
    ds.StructureSetName = cfg.structure_set_label
    ds.ApprovalStatus = "UNAPPROVED"
    stamp = when.strftime("%Y%m%d%H%M%S")
    ds.ContributingEquipmentSequence = DicomSequence(
        [_contributing_equipment(p, cfg, stamp) for p in provenances]
    )

    structure_rois: list[Dataset] = []
    contours: list[Dataset] = []
    observations: list[Dataset] = []
    skipped: list[str] = []
    for st in structures:
        if not st.mask.any():
            skipped.append(st.roi.name)
            continue
        number = len(structure_rois) + 1
        roi, observation = _roi_items(number, st.roi, frame_uid, st.provenance)
        roi_contour = Dataset()
        roi_contour.ReferencedROINumber = number
        roi_contour.ROIDisplayColor = list(st.roi.color)
        roi_contour.ContourSequence = DicomSequence(contour_items(st.mask, datasets, volume.frames))
        structure_rois.append(roi)
        contours.append(roi_contour)
        observations.append(observation)
    if skipped:
        logger.warning("study %s: ROIs without voxels left out: %s", study_uid, ", ".join(skipped))
    if not structure_rois:
        raise ModelError(f"study {study_uid}: the label map holds no voxel of any ROI")
    ds.StructureSetDescription = _description(provenances, skipped)[:1024]
    ds.StructureSetROISequence = DicomSequence(structure_rois)
    ds.ROIContourSequence = DicomSequence(contours)
    ds.RTROIObservationsSequence = DicomSequence(observations)
    ds.file_meta = file_meta(RTStructureSetStorage, sop_uid)
    return ds


def file_meta(sop_class_uid: str, sop_uid: str) -> FileMetaDataset:
    """File Meta Information of an object we write (Explicit VR Little Endian)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class_uid)
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    return meta


def write_dataset(ds: Dataset, path: Path) -> None:
    """Write ``ds`` as a DICOM file (preamble, File Meta, dataset in its TransferSyntaxUID),
    atomically and durably (:func:`gateway.durable.durable_write`).

    ``ds.file_meta`` must be set (as :func:`build_rtstruct` does).
    """
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    make_dirs(path.parent)
    durable_write(path, buf.getvalue())
