"""Pure rendering of a job's contour preview: the primary series with each ROI's outline in its
clinic colour, as PNG bytes (matplotlib, Agg, no pyplot: no global state, thread-safe).

Up to three slices of the series as acquired: the one with the largest combined ROI area and
those at 1/4 and 3/4 of the ROIs' extent (one slice when the ROIs span one). Nothing read from
the DICOM headers is drawn: slice numbers and ROI names only, never patient data.

Array contract as :mod:`gateway.imaging`: ``image`` and every mask indexed ``(z, y, x)``;
``spacing`` is ``(x, y, z)`` in mm.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

PANEL_IN = 3.2  # inches: each slice panel is this wide and high
TITLE_IN = 0.3
LEGEND_ROW_IN = 0.2
DPI = 100


@dataclass(frozen=True)
class PreviewRoi:
    name: str  # the clinic ROI name
    color: tuple[int, int, int]  # RGB 0-255, as in the RTSTRUCT's ROIDisplayColor
    mask: np.ndarray  # bool (z, y, x) on the image's grid


def preview_slices(rois: Sequence[PreviewRoi], depth: int) -> list[int]:
    """The slices shown (ascending): the one with the largest combined ROI area and those at
    1/4 and 3/4 of the ROIs' extent; the middle slice when there is no ROI voxel."""
    if not rois:
        return [depth // 2]
    area = np.zeros(depth, dtype=np.int64)
    for roi in rois:
        area += roi.mask.reshape(depth, -1).sum(axis=1)
    present = np.flatnonzero(area)
    if present.size == 0:
        return [depth // 2]
    first, last = int(present[0]), int(present[-1])
    largest = int(np.argmax(area))
    quarter = int(round(first + (last - first) / 4))
    three_quarters = int(round(first + 3 * (last - first) / 4))
    return sorted({quarter, largest, three_quarters})


def layout(panels: int, rois: int) -> tuple[int, float, float]:
    """Legend columns and the figure's (width, height) in inches: a panel per slice shown, a
    title above each and the legend's rows below."""
    columns = max(1, min(rois, 3 * panels))
    rows = max(1, -(-rois // columns))
    return columns, PANEL_IN * panels, PANEL_IN + TITLE_IN + LEGEND_ROW_IN * (rows + 1)


def render(
    image: np.ndarray, spacing: tuple[float, float, float], rois: Sequence[PreviewRoi]
) -> bytes:
    """The preview as PNG bytes, :func:`layout`'s size at ``DPI``."""
    if image.ndim != 3:
        raise ValueError(f"expected a (z, y, x) image, got shape {image.shape}")
    for roi in rois:
        if roi.mask.shape != image.shape:
            raise ValueError(f"ROI {roi.name}: mask {roi.mask.shape} is not on the image grid")
    slices = preview_slices(rois, image.shape[0])
    columns, width_in, height_in = layout(len(slices), len(rois))
    fig = Figure(figsize=(width_in, height_in), dpi=DPI)
    bottom = (height_in - PANEL_IN - TITLE_IN) / height_in  # the legend's strip
    lo, hi = np.percentile(image, [1, 99.5]) if image.size else (0.0, 1.0)
    aspect = spacing[1] / spacing[0]  # row spacing / column spacing
    width = 1.0 / len(slices)
    for i, k in enumerate(slices):
        ax = fig.add_axes((i * width, bottom, width, PANEL_IN / height_in))
        ax.imshow(
            image[k],
            cmap="gray",
            vmin=lo,
            vmax=hi if hi > lo else lo + 1,
            aspect=aspect,
            interpolation="nearest",
        )
        for roi in rois:
            mask = roi.mask[k]
            if mask.any():
                ax.contour(
                    mask.astype(np.float32),
                    levels=[0.5],
                    colors=[_hex(roi.color)],
                    linewidths=2.0,
                )
        ax.set_title(f"slice {k + 1} of {image.shape[0]}", fontsize=9)
        ax.set_axis_off()
    handles = [Line2D([], [], color=_hex(r.color), lw=3, label=r.name) for r in rois]
    if handles:
        fig.legend(
            handles=handles,
            loc="lower center",
            ncol=columns,
            fontsize=8,
            frameon=False,
        )
    else:
        fig.text(0.5, bottom / 2, "no contours", ha="center", va="center", fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def _hex(color: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*(int(max(0, min(255, c))) for c in color))
