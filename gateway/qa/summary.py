"""The statistics `aircon qa` lists per model version and ROI (pure).

:func:`summarize` turns QA rows into a JSON-able dict; :func:`to_csv` and :func:`roi_table` /
:func:`added_table` render it. Only the rows of the latest approved structure set of each job
count (as in :mod:`gateway.qa.drift`). Two windows: the last ``window_days`` days before ``now``
(``at >= now - window_days * 86400``), named ``"<window_days>d"``, and ``"all"``.

The dict (keys are stable; values in mm for HD95 and APL)::

    {"now": float, "window_days": int,
     "rois": [                              # one per (model, model_version, roi, window),
       {"model", "model_version", "roi",   # sorted by those, the window "<n>d" before "all"
        "window": "30d" | "all",
        "cases": int,          # compared + deleted
        "compared": int, "deleted": int, "unchanged": int,
        "unchanged_pct": float | None,      # unchanged / compared * 100
        "deleted_pct": float | None,        # deleted / (compared + deleted) * 100
        "dice" | "hd95" | "surface_dice" | "apl":
            {"n": int, "median": float | None, "q25": float | None, "q75": float | None}}],
     "added": [                             # approved ROIs with no AI counterpart: not scored
       {"model", "model_version", "window", "count": int,
        "rois": {approved ROI name: count}}]}

Median and quartiles over the compared cases whose value is not None, by numpy's default
(linear interpolation between order statistics, ``numpy.percentile(..., method="linear")``);
None when there is no value. Percentages are None when their denominator is 0. A window with no
rows still gets its row (zeros), so "last 30 days" and "all" always come in pairs.
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from rich.table import Table

from gateway.db.records import QaRecord, QaStatus
from gateway.qa.drift import latest_sets

METRICS = ("dice", "hd95", "surface_dice", "apl")
ALL = "all"
_STATS = ("n", "median", "q25", "q75")


def window_name(window_days: int) -> str:
    return f"{window_days}d"


def quartiles(values: Sequence[float]) -> dict[str, Any]:
    """``{"n", "median", "q25", "q75"}`` of the values (None when there are none)."""
    if not values:
        return {"n": 0, "median": None, "q25": None, "q75": None}
    q25, median, q75 = (float(q) for q in np.percentile(values, [25, 50, 75]))
    return {"n": len(values), "median": median, "q25": q25, "q75": q75}


def _pct(part: int, whole: int) -> float | None:
    return 100.0 * part / whole if whole else None


def _roi_stats(rows: Sequence[QaRecord]) -> dict[str, Any]:
    compared = [r for r in rows if r.status is QaStatus.COMPARED]
    deleted = sum(r.status is QaStatus.DELETED for r in rows)
    unchanged = sum(r.unchanged for r in compared)
    stats: dict[str, Any] = {
        "cases": len(compared) + deleted,
        "compared": len(compared),
        "deleted": deleted,
        "unchanged": unchanged,
        "unchanged_pct": _pct(unchanged, len(compared)),
        "deleted_pct": _pct(deleted, len(compared) + deleted),
    }
    for metric in METRICS:
        values = [v for r in compared if (v := getattr(r, metric)) is not None]
        stats[metric] = quartiles(values)
    return stats


def summarize(records: Iterable[QaRecord], now: float, window_days: int = 30) -> dict[str, Any]:
    """Statistics per (model, model_version, roi) for the last ``window_days`` and for all."""
    recent_name = window_name(window_days)
    since = now - window_days * 86400.0
    scored: dict[tuple[str, str, str], list[QaRecord]] = defaultdict(list)
    added: dict[tuple[str, str], list[QaRecord]] = defaultdict(list)
    for r in latest_sets(records):
        if r.status is QaStatus.ADDED:
            added[(r.model, r.model_version)].append(r)
        else:
            scored[(r.model, r.model_version, r.roi)].append(r)

    rois = []
    for (model, version, roi), rows in sorted(scored.items()):
        for name, chosen in ((recent_name, [r for r in rows if r.at >= since]), (ALL, rows)):
            base = {"model": model, "model_version": version, "roi": roi, "window": name}
            rois.append(base | _roi_stats(chosen))
    added_rows = []
    for (model, version), rows in sorted(added.items()):
        for name, chosen in ((recent_name, [r for r in rows if r.at >= since]), (ALL, rows)):
            names: dict[str, int] = defaultdict(int)
            for r in chosen:
                names[r.approved_roi] += 1
            added_rows.append(
                {
                    "model": model,
                    "model_version": version,
                    "window": name,
                    "count": len(chosen),
                    "rois": dict(sorted(names.items())),
                }
            )
    return {"now": now, "window_days": window_days, "rois": rois, "added": added_rows}


CSV_COLUMNS = (
    "model",
    "model_version",
    "roi",
    "window",
    "cases",
    "compared",
    "deleted",
    "unchanged",
    "unchanged_pct",
    "deleted_pct",
    *(f"{metric}_{stat}" for metric in METRICS for stat in _STATS),
)


def to_csv(summary: dict[str, Any]) -> str:
    """One row per model/version/ROI/window under a header (:data:`CSV_COLUMNS`); an empty
    cell where a value is None. Added ROIs are not in the CSV (not scored)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in summary["rois"]:
        flat = dict(row)
        for metric in METRICS:
            for stat in _STATS:
                flat[f"{metric}_{stat}"] = row[metric][stat]
        writer.writerow("" if flat[c] is None else flat[c] for c in CSV_COLUMNS)
    return out.getvalue()


def _iqr(stats: dict[str, Any], digits: int) -> str:
    if stats["median"] is None:
        return "-"
    return f"{stats['median']:.{digits}f} [{stats['q25']:.{digits}f}-{stats['q75']:.{digits}f}]"


def _pct_text(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} %"


def roi_table(summary: dict[str, Any]) -> Table:
    """The terminal table: medians with [25th-75th percentile]."""
    table = Table(title="Clinical QA per model version and ROI: median [IQR]")
    for name in ("Model", "Version", "ROI", "Window"):
        table.add_column(name)
    for name in ("Cases", "Dice", "HD95 mm", "sDice", "APL mm", "Unchanged", "Deleted"):
        table.add_column(name, justify="right")
    previous: tuple[str, str, str] | None = None
    for row in summary["rois"]:
        key = (row["model"], row["model_version"], row["roi"])
        first = key != previous
        previous = key
        table.add_row(
            *(key if first else ("", "", "")),
            row["window"],
            str(row["cases"]),
            _iqr(row["dice"], 3),
            _iqr(row["hd95"], 1),
            _iqr(row["surface_dice"], 3),
            _iqr(row["apl"], 0),
            _pct_text(row["unchanged_pct"]),
            _pct_text(row["deleted_pct"]),
            end_section=not first,
        )
    return table


def added_table(summary: dict[str, Any]) -> Table | None:
    """ROIs the clinicians added (no AI counterpart), per model version; None when none."""
    if not summary["added"]:
        return None
    table = Table(title="ROIs added by the clinicians (not scored)")
    for name in ("Model", "Version", "Window", "Added", "ROIs"):
        table.add_column(name, justify="right" if name == "Added" else "left")
    for row in summary["added"]:
        names = ", ".join(f"{roi} x{n}" for roi, n in row["rois"].items())
        table.add_row(row["model"], row["model_version"], row["window"], str(row["count"]), names)
    return table
