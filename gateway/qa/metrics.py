"""Per-ROI comparison of an AI mask with the clinician-approved mask on one grid (pure).

Array contract: masks are ``bool`` arrays indexed ``(z, y, x)`` (slice, row, column), as made by
:func:`gateway.contour.reader.rasterize_rtstruct`; ``spacing`` is ``(z, y, x)`` in mm, the same
order as the array axes. The exact definition of every value is in ``docs/qa-metrics.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree
from skimage import measure

# Rounding slack when a distance is compared with a tolerance: shared contour vertices sit on
# exact half-pixel positions, but the point-to-segment arithmetic can leave ~1e-15 mm.
_EPS_MM = 1e-9


@dataclass(frozen=True)
class RoiMetrics:
    """One ROI pair compared. Distances and lengths in mm, volumes in cm3 (ml).

    A value that is not defined for the pair (e.g. a distance when one mask is empty) is None.
    """

    dice: float | None
    hd: float | None  # Hausdorff distance (maximum)
    hd95: float | None  # 95th percentile of the pooled symmetric surface distances
    msd: float | None  # mean surface distance (pooled, symmetric)
    surface_dice: float | None  # at ``tolerance_mm``
    apl: float | None  # added path length at ``apl_tolerance_mm``
    volume_ai: float
    volume_approved: float
    volume_change: float | None  # (approved - ai) / ai
    unchanged: bool  # the two masks are identical
    tolerance_mm: float
    apl_tolerance_mm: float


def compare(
    ai: np.ndarray,
    approved: np.ndarray,
    spacing: Sequence[float],
    *,
    tolerance_mm: float = 2.0,
    apl_tolerance_mm: float = 1.0,
) -> RoiMetrics:
    """Compare the AI mask with the approved mask (same shape, ``spacing`` (z, y, x) mm)."""
    a = np.asarray(ai, dtype=bool)
    b = np.asarray(approved, dtype=bool)
    if a.ndim != 3 or a.shape != b.shape:
        raise ValueError(f"masks must be 3-D of one shape, got {a.shape} and {b.shape}")
    sp = tuple(float(s) for s in spacing)
    if len(sp) != 3 or not all(np.isfinite(s) and s > 0 for s in sp):
        raise ValueError(f"spacing must be three positive (z, y, x) mm values, got {spacing}")
    if tolerance_mm < 0 or apl_tolerance_mm < 0:
        raise ValueError("tolerances must be >= 0 mm")

    voxel_cm3 = sp[0] * sp[1] * sp[2] / 1000.0
    n_a, n_b = int(np.count_nonzero(a)), int(np.count_nonzero(b))
    volume_ai, volume_approved = n_a * voxel_cm3, n_b * voxel_cm3
    volume_change = (volume_approved - volume_ai) / volume_ai if n_a else None

    def result(
        dice: float,
        hd: float | None,
        hd95: float | None,
        msd: float | None,
        surface_dice: float,
        apl: float,
        unchanged: bool,
    ) -> RoiMetrics:
        return RoiMetrics(
            dice=dice,
            hd=hd,
            hd95=hd95,
            msd=msd,
            surface_dice=surface_dice,
            apl=apl,
            volume_ai=volume_ai,
            volume_approved=volume_approved,
            volume_change=volume_change,
            unchanged=unchanged,
            tolerance_mm=float(tolerance_mm),
            apl_tolerance_mm=float(apl_tolerance_mm),
        )

    if n_a == 0 and n_b == 0:
        return result(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, True)
    a, b = _crop_pair(a, b)
    if n_a == 0 or n_b == 0:
        # Only the approved contour can add path length: an AI ROI the clinician emptied adds none.
        apl = added_path_length(a, b, sp[1:], apl_tolerance_mm) if n_b else 0.0
        return result(0.0, None, None, None, 0.0, apl, False)
    if np.array_equal(a, b):
        return result(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, True)

    dice = 2.0 * int(np.count_nonzero(a & b)) / (n_a + n_b)
    d_ab, d_ba = surface_distances(a, b, sp)
    pooled = np.concatenate([d_ab, d_ba])
    within = int(np.count_nonzero(pooled <= tolerance_mm + _EPS_MM))
    return result(
        dice,
        float(pooled.max()),
        float(np.percentile(pooled, 95, method="linear")),
        float(pooled.mean()),
        within / pooled.size,
        added_path_length(a, b, sp[1:], apl_tolerance_mm),
        False,
    )


def _crop_pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both masks cut to the bounding box of ``a | b`` and zero-padded by one voxel.

    Exact for every metric here: all border voxels lie inside the box, so each distance transform
    still sees every voxel it measures to; the False padding makes the array edge "outside".
    """
    union = a | b
    box = []
    for axis in range(3):
        other = tuple(i for i in range(3) if i != axis)
        idx = np.flatnonzero(union.any(axis=other))
        box.append(slice(int(idx[0]), int(idx[-1]) + 1))
    crop = tuple(box)
    return np.pad(a[crop], 1), np.pad(b[crop], 1)


_FACES = ndimage.generate_binary_structure(3, 1)


def border(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` with at least one of their 6 face neighbours outside it."""
    return mask & ~ndimage.binary_erosion(mask, structure=_FACES, border_value=0)


def surface_distances(
    a: np.ndarray, b: np.ndarray, spacing: tuple[float, float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """Directed distances (mm) of each border voxel of ``a`` to the nearest border voxel of
    ``b``, and of ``b`` to ``a``; Euclidean between voxel centres. Both masks non-empty."""
    border_a, border_b = border(a), border(b)
    to_b = ndimage.distance_transform_edt(~border_b, sampling=spacing)
    to_a = ndimage.distance_transform_edt(~border_a, sampling=spacing)
    return np.asarray(to_b[border_a]), np.asarray(to_a[border_b])


def _contours(slice_mask: np.ndarray, spacing_yx: Sequence[float]) -> list[np.ndarray]:
    """Closed sub-pixel polylines (mm, (row, column)) around a 2-D mask, holes included."""
    padded = np.pad(slice_mask, 1).astype(np.float64)
    scale = np.asarray(spacing_yx, dtype=np.float64)
    return [c * scale for c in measure.find_contours(padded, 0.5)]


def _segments(polylines: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Start and end points of every segment of ``polylines``, as two (n, 2) arrays."""
    starts = np.concatenate([p[:-1] for p in polylines])
    ends = np.concatenate([p[1:] for p in polylines])
    return starts, ends


def _far_from(
    points: np.ndarray, seg_start: np.ndarray, seg_end: np.ndarray, tolerance: float
) -> np.ndarray:
    """For each point, True when its exact distance to every segment exceeds ``tolerance``.

    A point within ``tolerance`` of a segment is within ``tolerance + length / 2`` of the
    segment's midpoint, so a k-d tree radius search on midpoints finds every candidate pair;
    the exact point-to-segment distance then decides.
    """
    vec = seg_end - seg_start
    length = np.hypot(vec[:, 0], vec[:, 1])
    radius = tolerance + float(length.max()) / 2.0 + _EPS_MM
    mids = (seg_start + seg_end) / 2.0
    pairs = cKDTree(points).sparse_distance_matrix(cKDTree(mids), radius, output_type="ndarray")
    near = np.zeros(len(points), dtype=bool)
    if len(pairs) == 0:
        return ~near
    i, j = pairs["i"], pairs["j"]
    rel = points[i] - seg_start[j]
    len2 = np.maximum(length[j] ** 2, np.finfo(np.float64).tiny)
    t = np.clip(np.einsum("ij,ij->i", rel, vec[j]) / len2, 0.0, 1.0)
    dist = np.hypot(*(rel - t[:, None] * vec[j]).T)
    near[i[dist <= tolerance + _EPS_MM]] = True
    return ~near


def added_path_length(
    ai: np.ndarray, approved: np.ndarray, spacing_yx: Sequence[float], tolerance_mm: float
) -> float:
    """Length (mm) of the approved contour farther than ``tolerance_mm`` from the AI contour,
    summed over slices (axis 0); a segment counts whole when its midpoint is that far."""
    total = 0.0
    for z in np.flatnonzero(approved.any(axis=(1, 2))):
        mine = _contours(approved[z], spacing_yx)
        if not mine:
            continue
        start, end = _segments(mine)
        length = np.hypot(*(end - start).T)
        theirs = _contours(ai[z], spacing_yx) if ai[z].any() else []
        if not theirs:
            total += float(length.sum())
            continue
        far = _far_from((start + end) / 2.0, *_segments(theirs), tolerance_mm)
        total += float(length[far].sum())
    return total
