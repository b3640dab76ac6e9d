"""The report's figures as PNG bytes (matplotlib, Agg, no pyplot: no global state, thread-safe).

Rows are :class:`gateway.qa.report.RoiRow`-like objects: ``group`` (the x-axis label), the metric
attributes, and ``volume_ai`` / ``volume_ref`` in cm3.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from matplotlib.figure import Figure

# (attribute, axis title, better when higher)
METRICS = (
    ("dice", "Dice", True),
    ("hd95", "HD95 (mm)", False),
    ("surface_dice", "Surface Dice", True),
    ("apl", "Added path length (mm)", False),
)
_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2")


@dataclass(frozen=True)
class OverlaySlice:
    """What an overlay needs of one case and ROI: the image slice through the middle of the ROI
    on the reference series, both masks on it, and the pixel spacing (row, column) in mm."""

    image: np.ndarray
    reference: np.ndarray  # truth / approved
    ai: np.ndarray
    spacing: tuple[float, float]
    slice_index: int


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96, bbox_inches="tight")
    return buf.getvalue()


def metric_plots(groups: Mapping[str, Sequence[Any]]) -> bytes:
    """Box and strip plots of every metric per group (one column of points per group)."""
    names = list(groups)
    fig = Figure(figsize=(max(6.0, 1.2 * len(names) + 2) * 2, 7.5))
    rng = np.random.default_rng(0)  # the jitter only spreads points; fixed for stable output
    for i, (attr, title, _) in enumerate(METRICS):
        ax = fig.add_subplot(2, 2, i + 1)
        data = [[float(v) for r in groups[n] if (v := getattr(r, attr)) is not None] for n in names]
        shown = [d if d else [np.nan] for d in data]
        ax.boxplot(shown, widths=0.5, showfliers=False)
        for k, values in enumerate(data, start=1):
            if values:
                x = k + rng.uniform(-0.12, 0.12, len(values))
                ax.plot(x, values, "o", ms=4, alpha=0.7, color=_COLOURS[(k - 1) % len(_COLOURS)])
        ax.set_xticks(range(1, len(names) + 1), names, fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def bland_altman(groups: Mapping[str, Sequence[Any]], reference: str) -> bytes:
    """Bland-Altman plot of volumes: difference (AI - reference) against their mean, with each
    group's bias and 95 % limits of agreement (bias +/- 1.96 SD)."""
    fig = Figure(figsize=(8, 5))
    ax = fig.add_subplot(1, 1, 1)
    shown = 0
    for k, (name, rows) in enumerate(groups.items()):
        pairs = [
            (r.volume_ai, r.volume_ref)
            for r in rows
            if r.volume_ai is not None and r.volume_ref is not None
        ]
        if not pairs:
            continue
        shown += 1
        ai, ref = np.array(pairs, dtype=float).T
        mean, diff = (ai + ref) / 2, ai - ref
        colour = _COLOURS[k % len(_COLOURS)]
        ax.plot(mean, diff, "o", ms=5, alpha=0.8, color=colour, label=name)
        bias = float(diff.mean())
        sd = float(diff.std(ddof=1)) if len(diff) > 1 else 0.0
        ax.axhline(bias, color=colour, lw=1)
        for limit in (bias - 1.96 * sd, bias + 1.96 * sd):
            ax.axhline(limit, color=colour, lw=0.8, ls="--")
    ax.axhline(0, color="black", lw=0.5)
    ax.set_xlabel(f"mean of AI and {reference} volume (cm³)")
    ax.set_ylabel(f"AI - {reference} volume (cm³)")
    ax.set_title("Bland-Altman: volumes (solid: bias, dashed: bias ± 1.96 SD)", fontsize=10)
    if shown:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no volumes", ha="center", va="center", transform=ax.transAxes)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def overlay(s: OverlaySlice, title: str, reference: str) -> bytes:
    """The slice in grey with the reference outline (green) and the AI outline (red)."""
    rows, cols = s.image.shape
    aspect = s.spacing[0] / s.spacing[1]
    fig = Figure(figsize=(3.4, 3.4 * min(max(rows * aspect / cols, 0.4), 2.5) + 0.4))
    ax = fig.add_subplot(1, 1, 1)
    lo, hi = np.percentile(s.image, [1, 99.5]) if s.image.size else (0, 1)
    ax.imshow(s.image, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1, aspect=aspect)
    for mask, colour in ((s.reference, "#00e000"), (s.ai, "#ff2020")):
        if mask.any() and not mask.all():
            ax.contour(mask.astype(float), levels=[0.5], colors=colour, linewidths=1.2)
    ax.set_title(f"{title}\nslice {s.slice_index}: {reference} green, AI red", fontsize=8)
    ax.set_axis_off()
    fig.tight_layout()
    return _png(fig)


def control_chart(title: str, charts: Sequence[Any]) -> bytes:
    """The EWMA charts of one model version and ROI (``gateway.qa.drift.Chart``): each case's
    value, the EWMA, the centre and the limits; baseline cases grey, cases out of control red."""
    fig = Figure(figsize=(11.0, 2.8 * max(1, len(charts))))
    for i, chart in enumerate(charts):
        ax = fig.add_subplot(len(charts), 1, i + 1)
        pts = list(chart.points)
        if not pts:
            ax.text(0.5, 0.5, "no cases yet", ha="center", va="center", transform=ax.transAxes)
        base = [p for p in pts if p.baseline]
        judged = [p for p in pts if not p.baseline and p.ewma is not None]
        ax.plot([p.case for p in base], [p.value for p in base], "o", ms=3, color="#999999")
        ax.plot([p.case for p in judged], [p.value for p in judged], "o", ms=3, color="#1f77b4")
        if judged:
            x = [p.case for p in judged]
            ax.plot(x, [p.ewma for p in judged], "-", color="#1f77b4", label="EWMA")
            ax.plot(x, [p.lower for p in judged], "--", color="#555555", lw=0.8, label="limits")
            ax.plot(x, [p.upper for p in judged], "--", color="#555555", lw=0.8)
            out = [p for p in judged if p.out]
            ax.plot([p.case for p in out], [p.ewma for p in out], "o", color="#d62728", ms=6)
        if chart.centre is not None:
            ax.axhline(chart.centre, color="#2ca02c", lw=0.8, label="centre")
        ax.set_title(f"{title}: {chart.metric.label} ({chart.baseline_source})", fontsize=10)
        ax.set_xlabel("case", fontsize=8)
        ax.grid(alpha=0.3)
        if judged:
            ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return _png(fig)
