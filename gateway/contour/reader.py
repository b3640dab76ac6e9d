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

from gateway.imaging import Volume, sort_slices
from gateway.study.geometry import slice_normal

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Grid:
    """Pixel grid of the sorted reference slices, in patient coordinates (mm)."""

    uids: tuple[str, ...]
    positions: np.ndarray  # (z, 3) ImagePositionPatient per slice
    row_dir: np.ndarray  # along a row: increasing column index
    col_dir: np.ndarray  # along a column: increasing row index
    normal: np.ndarray
    row_spacing: float  # PixelSpacing[0]
    col_spacing: float  # PixelSpacing[1]
    shape: tuple[int, int, int]  # (z, rows, columns)
    index: dict[str, int]  # SOP Instance UID -> slice index

    @classmethod
    def from_datasets(cls, datasets: Sequence[Dataset]) -> _Grid:
        first = datasets[0]
        iop = [float(v) for v in first.ImageOrientationPatient]
        row_spacing, col_spacing = (float(v) for v in first.PixelSpacing)
        return cls(
            uids=tuple(str(ds.SOPInstanceUID) for ds in datasets),
            positions=np.array([[float(v) for v in ds.ImagePositionPatient] for ds in datasets]),
            row_dir=np.asarray(iop[:3]),
            col_dir=np.asarray(iop[3:6]),
            normal=slice_normal(iop),
            row_spacing=row_spacing,
            col_spacing=col_spacing,
            shape=(len(datasets), int(first.Rows), int(first.Columns)),
            index={str(ds.SOPInstanceUID): k for k, ds in enumerate(datasets)},
        )

    def slice_of(self, contour: Dataset, points: np.ndarray) -> int | None:
        """The slice index a contour lies on: by its referenced SOP Instance, else by plane."""
        for image in contour.get("ContourImageSequence", []):
            k = self.index.get(str(image.get("ReferencedSOPInstanceUID", "")))
            if k is not None:
                return k
        heights = self.positions @ self.normal
        height = float(np.mean(points @ self.normal))
        k = int(np.argmin(np.abs(heights - height)))
        tolerance = 0.5 * (abs(heights[1] - heights[0]) if len(heights) > 1 else 1.0)
        return k if abs(heights[k] - height) <= tolerance else None

    def to_pixels(self, points: np.ndarray, k: int) -> np.ndarray:
        """Patient points (n, 3) on slice k -> (n, 2) ``(row, column)`` pixel coordinates."""
        offset = points - self.positions[k]
        return np.column_stack(
            [offset @ self.col_dir / self.row_spacing, offset @ self.row_dir / self.col_spacing]
        )


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
    rtstruct: Dataset, reference: Sequence[Dataset] | Volume
) -> dict[str, np.ndarray]:
    """Per ROI name, a boolean mask ``(z, y, x)`` on the reference series' grid.

    ``reference`` is the referenced series (datasets in any order, headers suffice) or a
    :class:`Volume`. Contours are matched to slices by ReferencedSOPInstanceUID, falling back to
    the nearest slice plane within half a slice spacing; others are skipped with a warning.
    Only CLOSED_PLANAR contours are filled. ROIs without contours get an empty mask.
    """
    datasets = reference.datasets if isinstance(reference, Volume) else sort_slices(reference)[0]
    grid = _Grid.from_datasets(datasets)
    names = {int(roi.ROINumber): str(roi.ROIName) for roi in rtstruct.StructureSetROISequence}
    masks = {name: np.zeros(grid.shape, dtype=bool) for name in names.values()}
    for roi_contour in rtstruct.get("ROIContourSequence", []):
        name = names.get(int(roi_contour.ReferencedROINumber))
        if name is None:
            logger.warning("ROI contour for unknown ROI number %s", roi_contour.ReferencedROINumber)
            continue
        rings: dict[int, list[np.ndarray]] = {}
        for contour in roi_contour.get("ContourSequence", []):
            if contour.get("ContourGeometricType") != "CLOSED_PLANAR":
                continue
            points = _contour_points(contour)
            k = grid.slice_of(contour, points)
            if k is None:
                logger.warning("ROI %s: a contour lies on no slice of the reference", name)
                continue
            rings.setdefault(k, []).append(grid.to_pixels(points, k))
        for k, slice_rings in rings.items():
            masks[name][k] ^= fill_even_odd(slice_rings, grid.shape[1:])
    return masks


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice coefficient of two boolean masks of the same shape (1.0 when both are empty)."""
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} and {b.shape}")
    total = int(np.count_nonzero(a)) + int(np.count_nonzero(b))
    if total == 0:
        return 1.0
    return 2.0 * int(np.count_nonzero(a & b)) / total
