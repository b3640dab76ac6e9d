"""Validation cases on disk: a DICOM study folder plus its truth.

A case is a folder holding one DICOM study in any layout (files found recursively, files that
are not DICOM ignored) and its truth, either

- an RTSTRUCT: ``truth.dcm`` in the case folder, or any RTSTRUCT in its ``truth/`` subfolder;
- NIfTI label maps in ``truth/``: one ``<ROI name>.nii.gz`` per ROI (non-zero = inside), or one
  multi-label ``labels.nii.gz`` with ``labels.json`` (``{"1": "Prostate", ...}``).

NIfTI truth is read with SimpleITK (which turns the NIfTI RAS affine into DICOM LPS) and must
lie on the reference series' grid (same size; spacing, origin and direction within
:data:`GRID_TOLERANCE`): it is never resampled, so a truth drawn on another grid is refused with
the differences named rather than silently interpolated.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from gateway.contour.reader import rasterize_rtstruct
from gateway.imaging import Volume

log = logging.getLogger(__name__)

RTSTRUCT_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
TRUTH_DIR = "truth"
TRUTH_FILE = "truth.dcm"
GRID_TOLERANCE = 1e-3  # mm for spacing and origin, cosine units for direction (float32 NIfTI)


class TruthError(ValueError):
    """The case's truth is missing, ambiguous, or not on the reference grid."""


@dataclass
class CaseFiles:
    """What a case folder holds: its DICOM instances (headers and pixels, in no order) and
    its truth files."""

    folder: Path
    instances: list[tuple[Path, Dataset]] = field(default_factory=list)
    truth_rtstruct: list[Path] = field(default_factory=list)
    truth_nifti: list[Path] = field(default_factory=list)
    labels_json: Path | None = None
    ignored: int = 0  # files that are not DICOM

    @property
    def truth_files(self) -> list[Path]:
        extra = [self.labels_json] if self.labels_json else []
        return sorted([*self.truth_rtstruct, *self.truth_nifti, *extra])


def find_cases(cases_dir: Path) -> list[Path]:
    """The case folders under ``cases_dir`` in name order (``cases_dir`` itself when it holds
    a truth of its own)."""
    if (cases_dir / TRUTH_FILE).is_file() or (cases_dir / TRUTH_DIR).is_dir():
        return [cases_dir]
    return sorted(p for p in cases_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def _files(folder: Path) -> Iterator[Path]:
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not any(part.startswith(".") for part in path.parts[-1:]):
            yield path


def _read_dicom(path: Path) -> Dataset | None:
    try:
        return pydicom.dcmread(path)
    except (InvalidDicomError, OSError, ValueError, EOFError):
        return None


def scan(folder: Path) -> CaseFiles:
    """Sort a case folder's files into image instances and truth."""
    case = CaseFiles(folder)
    truth_dir = folder / TRUTH_DIR
    for path in _files(folder):
        in_truth = truth_dir in path.parents
        if in_truth and path.name.endswith((".nii.gz", ".nii")):
            case.truth_nifti.append(path)
            continue
        if in_truth and path.name == "labels.json":
            case.labels_json = path
            continue
        ds = _read_dicom(path)
        if ds is None:
            case.ignored += 1
            continue
        if str(ds.get("SOPClassUID", "")) == RTSTRUCT_STORAGE:
            if in_truth or path == folder / TRUTH_FILE:
                case.truth_rtstruct.append(path)
            else:
                case.ignored += 1  # e.g. an earlier AI structure set: never an input, never truth
            continue
        if in_truth:
            case.ignored += 1
            continue
        case.instances.append((path, ds))
    return case


def fingerprint(sop_instance_uids: list[str], truth_files: list[Path]) -> str:
    """SHA-256 over the sorted SOP Instance UIDs of the images, then each truth file's own
    SHA-256 in path order: the same data set gives the same value on any machine."""
    h = hashlib.sha256()
    for uid in sorted(sop_instance_uids):
        h.update(uid.encode() + b"\n")
    for path in truth_files:
        h.update(hashlib.sha256(path.read_bytes()).hexdigest().encode() + b"\n")
    return h.hexdigest()


def read_truth(case: CaseFiles, reference: Volume) -> dict[str, np.ndarray]:
    """The truth masks of ``case`` by ROI name, bool ``(z, y, x)`` on ``reference``'s grid."""
    if case.truth_rtstruct and case.truth_nifti:
        raise TruthError("truth given both as RTSTRUCT and as NIfTI: keep one")
    if len(case.truth_rtstruct) > 1:
        raise TruthError(f"{len(case.truth_rtstruct)} truth RTSTRUCTs: keep one")
    if case.truth_rtstruct:
        ds = pydicom.dcmread(case.truth_rtstruct[0])
        frame = str(ds.get("FrameOfReferenceUID", "")) or _referenced_frame(ds)
        if frame and frame != reference.frame_of_reference_uid:
            raise TruthError(
                "the truth RTSTRUCT is in another frame of reference than the reference series"
            )
        return rasterize_rtstruct(ds, reference)
    if not case.truth_nifti:
        raise TruthError(f"no truth: put {TRUTH_FILE}, or an RTSTRUCT or NIfTI in {TRUTH_DIR}/")
    return _nifti_truth(case, reference)


def _referenced_frame(ds: Dataset) -> str:
    frames = ds.get("ReferencedFrameOfReferenceSequence") or []
    return str(frames[0].get("FrameOfReferenceUID", "")) if frames else ""


def _nifti_truth(case: CaseFiles, reference: Volume) -> dict[str, np.ndarray]:
    multi = [p for p in case.truth_nifti if p.name.startswith("labels.nii")]
    if multi:
        if case.labels_json is None:
            raise TruthError('labels.nii.gz needs labels.json ({"1": "Prostate", ...})')
        names = json.loads(case.labels_json.read_text())
        labels = _on_grid(multi[0], reference)
        return {str(name): labels == int(value) for value, name in names.items()}
    return {
        p.name.removesuffix(".gz").removesuffix(".nii"): _on_grid(p, reference) != 0
        for p in case.truth_nifti
    }


def _on_grid(path: Path, reference: Volume) -> np.ndarray:
    image = sitk.ReadImage(str(path))
    ref = reference.image
    problems = []
    if image.GetSize() != ref.GetSize():
        problems.append(f"size {image.GetSize()} vs {ref.GetSize()}")
    for what, a, b in (
        ("spacing", image.GetSpacing(), ref.GetSpacing()),
        ("origin", image.GetOrigin(), ref.GetOrigin()),
        ("direction", image.GetDirection(), ref.GetDirection()),
    ):
        if len(a) != len(b) or not np.allclose(a, b, rtol=0, atol=GRID_TOLERANCE):
            shown = ", ".join(f"{v:.3f}" for v in a)
            problems.append(f"{what} ({shown}) differs from the series'")
    if problems:
        raise TruthError(
            f"truth {path.name} is not on the reference series' grid: " + "; ".join(problems)
        )
    return sitk.GetArrayFromImage(image)
