"""Per-ROI comparison of an AI mask with the clinician-approved mask on one grid (pure).

Array contract: masks are ``bool`` arrays indexed ``(z, y, x)`` (slice, row, column), as made by
:func:`gateway.contour.reader.rasterize_rtstruct`; ``spacing`` is ``(z, y, x)`` in mm, the same
order as the array axes. The exact definition of every value is in ``docs/qa-metrics.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


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
    raise NotImplementedError
