"""Input guardrails (pure): is a series within a model's intended use?

A model trained on axial T2 of 3 mm slices should not be given an 8 mm sagittal: outside its
guardrails the job stops with a readable reason instead of sending contours made on data the
model never saw. Checked on the primary series (the grid the model runs on); modality on all.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from gateway.db.records import SeriesInfo
from gateway.grid import slice_normal
from gateway.segment.spec import Guardrails


def _num(value: float) -> str:
    return f"{value:.1f}".rstrip("0").rstrip(".") if value % 1 else f"{value:.0f}"


def _outside(what: str, value: float, bounds: Sequence[float], unit: str = "") -> str | None:
    lo, hi = bounds
    if lo <= value <= hi:
        return None
    shown = str(value) if isinstance(value, int) else f"{value:.1f}"
    return f"{what} {shown}{unit} outside {_num(lo)}-{_num(hi)}{unit}"


def oblique_deg(orientation: Sequence[float]) -> float:
    """Angle between the slice normal and the patient's cranio-caudal axis (0 = true axial)."""
    normal = slice_normal(orientation)
    return math.degrees(math.acos(min(1.0, abs(float(normal[2])))))


def check(
    rails: Guardrails,
    channel: str,
    series: SeriesInfo,
    slice_spacing: float | None,
    *,
    primary: bool,
) -> list[str]:
    """Readable problems of ``series`` (feeding ``channel``) against ``rails``; empty if fine."""
    problems: list[str] = []
    attrs = series.attributes
    if rails.modality is not None:
        modality = str(attrs.get("Modality", ""))
        if modality not in rails.modality:
            problems.append(f"{channel} modality '{modality}' is not {' or '.join(rails.modality)}")
    if not primary or not series.slices:
        return problems
    first = series.slices[0]
    found: list[str | None] = []  # range checks: None where within range
    if rails.max_oblique_deg is not None and first.orientation is not None:
        angle = oblique_deg(first.orientation)
        if angle > rails.max_oblique_deg:
            problems.append(
                f"{channel} is not axial: slices tilted {angle:.0f} degrees "
                f"(at most {_num(rails.max_oblique_deg)})"
            )
    if rails.slice_thickness_mm is not None:
        thickness = attrs.get("SliceThickness")
        try:
            value = float(thickness) if thickness not in (None, "") else slice_spacing
        except (TypeError, ValueError):
            value = slice_spacing
        if value is not None:
            found.append(
                _outside(f"{channel} slice thickness", value, rails.slice_thickness_mm, " mm")
            )
    if rails.pixel_spacing_mm is not None and first.pixel_spacing is not None:
        for v in sorted(set(first.pixel_spacing), reverse=True):
            found.append(_outside(f"{channel} pixel spacing", v, rails.pixel_spacing_mm, " mm"))
    if rails.slices is not None:
        found.append(_outside(f"{channel} slice count", len(series.slices), rails.slices))
    if (
        rails.field_of_view_mm is not None
        and first.pixel_spacing is not None
        and first.rows
        and first.columns
    ):
        fov = np.array(
            [first.rows * first.pixel_spacing[0], first.columns * first.pixel_spacing[1]]
        )
        for v in sorted(set(fov.tolist())):
            found.append(_outside(f"{channel} field of view", v, rails.field_of_view_mm, " mm"))
    return problems + [p for p in found if p is not None]
