"""`aircon qa` statistics: medians, IQR, % unchanged / deleted, last 30 days vs all."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import numpy as np
import pytest
from rich.console import Console

from gateway.db.records import QaRecord, QaStatus
from gateway.qa.summary import CSV_COLUMNS, added_table, roi_table, summarize, to_csv

NOW = 1_750_000_000.0
DAY = 86400.0


def row(
    job: int,
    roi: str,
    days_ago: float,
    status: QaStatus = QaStatus.COMPARED,
    version: str = "1.0",
    **metrics: object,
) -> QaRecord:
    return QaRecord(
        job_id=job,
        study_uid=f"1.2.3.{job}",
        model="pelvis",
        model_version=version,
        roi=roi if status is not QaStatus.ADDED else "",
        approved_roi=roi if status is not QaStatus.DELETED else "",
        status=status,
        ai_uid=f"1.2.4.{job}",
        approved_uid=f"1.2.5.{job}",
        at=NOW - days_ago * DAY,
        **metrics,  # type: ignore[arg-type]
    )


DICE = [0.91, 0.97, 0.85, 1.0, 0.72, 0.99]
HD95 = [2.0, 1.0, 4.5, 0.0, 9.0, 1.2]


def prostate_rows() -> list[QaRecord]:
    """Six compared prostates (the first three older than 30 days), one deleted, one added."""
    rows = [
        row(
            j,
            "Prostate",
            days_ago=100 - 20 * j if j <= 3 else 10 - j,
            dice=DICE[j - 1],
            hd95=HD95[j - 1],
            surface_dice=DICE[j - 1],
            apl=None if j == 2 else 10.0 * j,
            unchanged=DICE[j - 1] == 1.0,
        )
        for j in range(1, 7)
    ]
    rows.append(row(7, "Prostate", days_ago=2, status=QaStatus.DELETED))
    rows.append(row(7, "Seminal vesicles", days_ago=2, status=QaStatus.ADDED))
    return rows


def by_window(summary: dict[str, Any], roi: str = "Prostate") -> dict[str, Any]:
    return {r["window"]: r for r in summary["rois"] if r["roi"] == roi}


def test_median_and_iqr_match_numpy() -> None:
    stats = by_window(summarize(prostate_rows(), NOW))["all"]
    assert stats["dice"]["n"] == 6
    assert stats["dice"]["median"] == pytest.approx(np.median(DICE))
    assert stats["dice"]["q25"] == pytest.approx(np.percentile(DICE, 25))
    assert stats["dice"]["q75"] == pytest.approx(np.percentile(DICE, 75))
    assert stats["hd95"]["median"] == pytest.approx(np.median(HD95))
    # A None APL is skipped, not counted as 0.
    apl = [10.0, 30.0, 40.0, 50.0, 60.0]
    assert stats["apl"]["n"] == 5
    assert stats["apl"]["median"] == pytest.approx(40.0)
    assert stats["apl"]["q25"] == pytest.approx(np.percentile(apl, 25))


def test_percent_unchanged_and_deleted() -> None:
    stats = by_window(summarize(prostate_rows(), NOW))["all"]
    assert (stats["cases"], stats["compared"], stats["deleted"]) == (7, 6, 1)
    assert stats["unchanged_pct"] == pytest.approx(100 / 6)  # 1 of 6 compared
    assert stats["deleted_pct"] == pytest.approx(100 / 7)  # 1 of 6 compared + 1 deleted


def test_last_30_days_against_all() -> None:
    summary = summarize(prostate_rows(), NOW)
    windows = by_window(summary)
    assert list(windows) == ["30d", "all"]
    recent = windows["30d"]
    assert (recent["compared"], recent["deleted"]) == (3, 1)  # jobs 4-6 and the deleted 7
    assert recent["dice"]["median"] == pytest.approx(np.median(DICE[3:]))
    assert recent["deleted_pct"] == pytest.approx(25.0)
    # The window is configurable and relative to `now`.
    week = by_window(summarize(prostate_rows(), NOW, window_days=5))["5d"]
    assert (week["compared"], week["deleted"]) == (2, 1)  # jobs 5, 6 (5 and 4 days ago), 7
    later = by_window(summarize(prostate_rows(), NOW + 365 * DAY))["30d"]
    assert later["cases"] == 0 and later["dice"]["median"] is None
    assert later["unchanged_pct"] is None and later["deleted_pct"] is None


def test_added_rois_are_listed_per_model_version_not_scored() -> None:
    summary = summarize(prostate_rows(), NOW)
    assert [r["roi"] for r in summary["rois"]] == ["Prostate", "Prostate"]
    assert summary["added"] == [
        {
            "model": "pelvis",
            "model_version": "1.0",
            "window": "30d",
            "count": 1,
            "rois": {"Seminal vesicles": 1},
        },
        {
            "model": "pelvis",
            "model_version": "1.0",
            "window": "all",
            "count": 1,
            "rois": {"Seminal vesicles": 1},
        },
    ]


def test_model_versions_are_kept_apart() -> None:
    rows = prostate_rows() + [row(20, "Prostate", 1, version="2.0", dice=0.5, unchanged=False)]
    summary = summarize(rows, NOW)
    keys = [(r["model_version"], r["window"], r["cases"]) for r in summary["rois"]]
    assert keys == [("1.0", "30d", 4), ("1.0", "all", 7), ("2.0", "30d", 1), ("2.0", "all", 1)]


def test_json_keys_are_stable_and_serialisable() -> None:
    summary = summarize(prostate_rows(), NOW)
    assert set(summary) == {"now", "window_days", "rois", "added"}
    first = summary["rois"][0]
    assert list(first) == [
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
        "dice",
        "hd95",
        "surface_dice",
        "apl",
    ]
    assert set(first["surface_dice"]) == {"n", "median", "q25", "q75"}
    assert json.loads(json.dumps(summary)) == summary


def test_csv_header_and_one_row_per_roi_and_window() -> None:
    text = to_csv(summarize(prostate_rows(), NOW))
    rows = list(csv.reader(io.StringIO(text)))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert rows[0][:4] == ["model", "model_version", "roi", "window"]
    assert "dice_median" in rows[0] and "apl_q75" in rows[0]
    assert [r[:4] for r in rows[1:]] == [
        ["pelvis", "1.0", "Prostate", "30d"],
        ["pelvis", "1.0", "Prostate", "all"],
    ]
    parsed = list(csv.DictReader(io.StringIO(text)))
    assert float(parsed[1]["dice_median"]) == pytest.approx(np.median(DICE))
    assert parsed[1]["cases"] == "7"
    later = list(csv.DictReader(io.StringIO(to_csv(summarize(prostate_rows(), NOW + 1e8)))))
    assert later[0]["dice_median"] == ""  # None is an empty cell


def test_rich_tables_render() -> None:
    summary = summarize(prostate_rows(), NOW)
    console = Console(width=160, record=True)
    console.print(roi_table(summary))
    table = added_table(summary)
    assert table is not None
    console.print(table)
    text = console.export_text()
    assert "Prostate" in text and "30d" in text and "Seminal vesicles x1" in text
    assert f"{np.median(DICE):.3f}" in text


def test_empty_input_gives_empty_output() -> None:
    summary = summarize([], NOW)
    assert summary["rois"] == [] and summary["added"] == []
    assert to_csv(summary).splitlines() == [",".join(CSV_COLUMNS)]
    assert added_table(summary) is None
    Console(record=True).print(roi_table(summary))
