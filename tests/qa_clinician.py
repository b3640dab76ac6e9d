"""The clinician, played by a script: edit an AI structure set with known edits and approve it.

Edits are made on the masks the independent reader reads from the AI set, and written back as
contours by the same contour writer the gateway uses, so each edit's expected effect on the QA
metrics can be computed from the edit itself.
"""

from __future__ import annotations

import copy
import datetime
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from scipy import ndimage

from gateway.contour.reader import rasterize_rtstruct
from gateway.contour.rtstruct import contour_items


def _roi_number(ds: Dataset, name: str) -> int:
    return next(int(r.ROINumber) for r in ds.StructureSetROISequence if r.ROIName == name)


def _roi_contour(ds: Dataset, name: str) -> Dataset:
    number = _roi_number(ds, name)
    return next(c for c in ds.ROIContourSequence if int(c.ReferencedROINumber) == number)


def contour_length_mm(items: Sequence[Dataset]) -> float:
    """Total length of closed planar contours (the polygon through ContourData, closed)."""
    total = 0.0
    for item in items:
        pts = np.asarray([float(v) for v in item.ContourData]).reshape(-1, 3)
        total += float(np.linalg.norm(pts - np.roll(pts, -1, axis=0), axis=1).sum())
    return total


@dataclass
class Clinician:
    ai: Dataset
    reference: Sequence[Dataset]  # the AI set's primary series, sorted along the normal

    def __post_init__(self) -> None:
        self.ds = copy.deepcopy(self.ai)
        self.masks = rasterize_rtstruct(self.ai, self.reference)
        first = self.reference[0]
        self.pixel = tuple(float(v) for v in first.PixelSpacing)  # (row, column) mm

    def grow(self, name: str, mm: float, slices: int) -> tuple[list[int], float]:
        """Grow ``name`` by ``mm`` in-plane on ``slices`` central slices of the ROI; return the
        slices and the length (mm) of the grown contours on them."""
        mask = self.masks[name].copy()
        zs = np.flatnonzero(mask.any(axis=(1, 2)))
        chosen = [int(z) for z in zs[len(zs) // 2 - slices // 2 :][:slices]]
        for z in chosen:
            outside = ndimage.distance_transform_edt(~mask[z], sampling=self.pixel)
            mask[z] |= outside <= mm
        self._write(name, mask)
        grown = np.zeros_like(mask)
        grown[chosen] = mask[chosen]
        return chosen, contour_length_mm(contour_items(grown, self.reference))

    def delete_slice(self, name: str) -> int:
        mask = self.masks[name].copy()
        zs = np.flatnonzero(mask.any(axis=(1, 2)))
        z = int(zs[len(zs) // 2])
        mask[z] = False
        self._write(name, mask)
        return z

    def rename(self, name: str, to: str) -> None:
        number = _roi_number(self.ds, name)
        for roi in self.ds.StructureSetROISequence:
            if int(roi.ROINumber) == number:
                roi.ROIName = to
        self.masks[to] = self.masks.pop(name)

    def add(self, name: str, like: str, margin_mm: float) -> None:
        """A new ROI: ``like`` expanded by ``margin_mm`` in plane (e.g. a CTV)."""
        base = self.masks[like]
        new = np.zeros_like(base)
        for z in np.flatnonzero(base.any(axis=(1, 2))):
            new[z] = ndimage.distance_transform_edt(~base[z], sampling=self.pixel) <= margin_mm
        number = max(int(r.ROINumber) for r in self.ds.StructureSetROISequence) + 1
        template = self.ds.StructureSetROISequence[0]
        roi = copy.deepcopy(template)
        roi.ROINumber, roi.ROIName = number, name
        self.ds.StructureSetROISequence.append(roi)
        contour = copy.deepcopy(self.ds.ROIContourSequence[0])
        contour.ReferencedROINumber = number
        contour.ContourSequence = contour_items(new, self.reference)
        self.ds.ROIContourSequence.append(contour)
        observation = copy.deepcopy(self.ds.RTROIObservationsSequence[0])
        observation.ObservationNumber = number
        observation.ReferencedROINumber = number
        observation.ROIInterpreter = ""
        observation.RTROIInterpretedType = "CTV"
        self.ds.RTROIObservationsSequence.append(observation)

    def approve(self) -> Dataset:
        """Mark APPROVED, as a new version (new SOP Instance and Series UIDs, date now)."""
        now = datetime.datetime.now()
        self.ds.SOPInstanceUID = generate_uid()
        self.ds.file_meta.MediaStorageSOPInstanceUID = self.ds.SOPInstanceUID
        self.ds.SeriesInstanceUID = generate_uid()
        self.ds.ApprovalStatus = "APPROVED"
        self.ds.ReviewDate = now.strftime("%Y%m%d")
        self.ds.ReviewTime = now.strftime("%H%M%S")
        self.ds.ReviewerName = "Physician^Test"
        self.ds.StructureSetLabel = "APPROVED"
        self.ds.StructureSetDate = now.strftime("%Y%m%d")
        self.ds.StructureSetTime = now.strftime("%H%M%S")
        return self.ds

    def _write(self, name: str, mask: np.ndarray) -> None:
        self.masks[name] = mask
        _roi_contour(self.ds, name).ContourSequence = contour_items(mask, self.reference)
