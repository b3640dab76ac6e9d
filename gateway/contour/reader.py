"""Independent RTSTRUCT reader: contours -> boolean masks on a reference image grid.

Written without rt-utils or OpenCV so that it can check what :mod:`gateway.contour.rtstruct` writes,
and used by QA. It fills contours the way planning systems do: a pixel belongs to an ROI when
its centre lies inside the contours of its slice under the even-odd rule over all of the ROI's
contours on that slice (so a contour inside another is a hole).

Array contract: masks are ``bool`` arrays indexed ``(z, y, x)`` = (slice, row, column) with
slices sorted ascending along the slice normal, the same as
``sitk.GetArrayFromImage(volume.image)`` for a :class:`gateway.imaging.Volume`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset

from gateway.grid import Grid, patient_to_pixel
from gateway.imaging import Slices, Volume, sort_slices

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Reference:
    """The sorted reference slices: their grid and each slice's own plane."""

    datasets: tuple[Dataset, ...]
    grid: Grid
    index: dict[str, int]  # SOP Instance UID (":<frame>" for a frame) -> slice index

    @classmethod
    def of(cls, reference: Sequence[Dataset] | Volume | Slices) -> _Reference:
        frames: Sequence[int] = ()
        if isinstance(reference, Volume):
            datasets, grid, frames = reference.datasets, Grid.of(reference.image), reference.frames
        elif isinstance(reference, Slices):
            datasets, grid, frames = reference.datasets, reference.grid, reference.frames
        else:
            datasets, spacing = sort_slices(reference)
            grid = Grid.of_slices(datasets[0], spacing)
        index = {
            _ref(str(ds.SOPInstanceUID), frames[k] if frames else None): k
            for k, ds in enumerate(datasets)
        }
        return cls(datasets, grid, index)

    @property
    def shape(self) -> tuple[int, int, int]:
        first = self.datasets[0]
        return (len(self.datasets), int(first.Rows), int(first.Columns))

    def slice_of(self, contour: Dataset, points: np.ndarray) -> int | None:
        """The slice index a contour lies on: by its referenced SOP Instance, else by plane."""
        for image in contour.get("ContourImageSequence", []):
            try:
                frame = (
                    int(image.ReferencedFrameNumber) if "ReferencedFrameNumber" in image else None
                )
            except (TypeError, ValueError):
                frame = None
            k = self.index.get(_ref(str(image.get("ReferencedSOPInstanceUID", "")), frame))
            if k is not None:
                return k
        height = float(np.mean(self.grid.slice_coordinate(points))) if len(points) else np.nan
        if not np.isfinite(height):
            return None
        k = round(height)
        return k if 0 <= k < len(self.datasets) and abs(height - k) <= 0.5 else None


def _ref(sop_instance_uid: str, frame: int | None) -> str:
    return sop_instance_uid if frame is None else f"{sop_instance_uid}:{frame}"


def _edges(rings: Sequence[np.ndarray]) -> np.ndarray:
    """All edges of closed rings as an (m, 4) array ``(r0, c0, r1, c1)``."""
    return np.concatenate(
        [np.column_stack([ring, np.roll(ring, -1, axis=0)]) for ring in rings if len(ring) >= 3]
    )


def fill_even_odd(rings: Sequence[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Pixels ``(rows, columns)`` whose centre is inside ``rings`` under the even-odd rule.

    ``rings`` are ``(n, 2)`` arrays of ``(row, column)`` pixel coordinates, pixel centres at
    integer coordinates. A scanline crossing-number test: along each row of centres, count the
    edges crossed to the right of each centre (an edge counts when one end is above the row and
    the other on or below it, so vertices on the scanline are counted once).
    """
    mask = np.zeros(shape, dtype=bool)
    rings = [r for r in rings if len(r) >= 3]
    if not rings:
        return mask
    edges = _edges(rings)
    r0, c0, r1, c1 = edges.T
    low = max(int(np.ceil(edges[:, [0, 2]].min())), 0)
    high = min(int(np.floor(edges[:, [0, 2]].max())), shape[0] - 1)
    columns = np.arange(shape[1], dtype=float)
    for row in range(low, high + 1):
        crossing = (r0 > row) != (r1 > row)
        if not crossing.any():
            continue
        a0, b0, a1, b1 = r0[crossing], c0[crossing], r1[crossing], c1[crossing]
        xs = np.sort(b0 + (row - a0) * (b1 - b0) / (a1 - a0))
        right = len(xs) - np.searchsorted(xs, columns, side="right")
        mask[row] = right % 2 == 1
    return mask


def _contour_points(contour: Dataset) -> np.ndarray:
    return np.asarray([float(v) for v in contour.ContourData], dtype=float).reshape(-1, 3)


def rasterize_rtstruct(
    rtstruct: Dataset, reference: Sequence[Dataset] | Volume | Slices
) -> dict[str, np.ndarray]:
    """Per ROI name, a boolean mask ``(z, y, x)`` on the reference series' grid.

    ``reference`` is the referenced series (datasets in any order, headers suffice) or a
    :class:`Volume`. Contours are matched to slices by ReferencedSOPInstanceUID, falling back to
    the nearest slice plane within half a slice spacing; others are skipped with a warning.
    Only CLOSED_PLANAR contours are filled. ROIs without contours get an empty mask.
    Malformed items (an ROI without a number or name, ContourData that is not 3-D points, not
    finite) are skipped with a warning, so the rest of the structure set is still read.
    """
    ref = _Reference.of(reference)
    names: dict[int, str] = {}
    for roi in rtstruct.get("StructureSetROISequence", []):
        try:
            names[int(roi.ROINumber)] = str(roi.ROIName)
        except (AttributeError, TypeError, ValueError):
            logger.warning("an ROI without a valid ROINumber or ROIName: skipped")
    masks = {name: np.zeros(ref.shape, dtype=bool) for name in names.values()}
    for roi_contour in rtstruct.get("ROIContourSequence", []):
        try:
            name = names.get(int(roi_contour.ReferencedROINumber))
        except (AttributeError, TypeError, ValueError):
            name = None
        if name is None:
            logger.warning("an ROI contour refers to no ROI of the structure set: skipped")
            continue
        rings: dict[int, list[np.ndarray]] = {}
        for contour in roi_contour.get("ContourSequence", []):
            if contour.get("ContourGeometricType") != "CLOSED_PLANAR":
                continue
            try:
                points = _contour_points(contour)
            except (AttributeError, TypeError, ValueError):
                points = np.empty((0, 3))
            if not len(points) or not np.isfinite(points).all():
                logger.warning("ROI %s: a contour without valid ContourData: skipped", name)
                continue
            k = ref.slice_of(contour, points)
            if k is None:
                logger.warning("ROI %s: a contour lies on no slice of the reference", name)
                continue
            rings.setdefault(k, []).append(patient_to_pixel(ref.datasets[k], points))
        for k, slice_rings in rings.items():
            masks[name][k] ^= fill_even_odd(slice_rings, ref.shape[1:])
    return masks


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice coefficient of two boolean masks of the same shape (1.0 when both are empty)."""
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} and {b.shape}")
    total = int(np.count_nonzero(a)) + int(np.count_nonzero(b))
    if total == 0:
        return 1.0
    return 2.0 * int(np.count_nonzero(a & b)) / total
