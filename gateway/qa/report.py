"""Self-contained HTML and CSV reports of AI contours against a reference: the validation report
(reference = truth of a labelled test set) and the monthly monitoring report (reference = the
clinician-approved structure sets, from :class:`gateway.db.records.QaRecord`).

One HTML file with every figure inline (base64 PNG), no external resource; a CSV with one row per
case and ROI; a CSV with one row per model version and ROI. Rows carry UIDs, dates and ROI names
only, never a patient's name, ID or birth date.

Acceptance (``qa.acceptance`` of model.yaml): an ROI **passes** when the median over its scored
cases meets every threshold set for it; a threshold whose metric has no value fails; an ROI with
no threshold set is "no thresholds set", never a pass. Each row also says whether that one case
met the thresholds.
"""

from __future__ import annotations

import base64
import csv
import dataclasses
import datetime
import enum
import importlib.resources
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.db.records import QaRecord, QaStatus
from gateway.qa import plots
from gateway.qa.metrics import RoiMetrics
from gateway.qa.plots import OverlaySlice
from gateway.qa.summary import quartiles
from gateway.segment.spec import ModelQa, RoiAcceptance

WORST = 5


class Verdict(str, enum.Enum):
    PASS = "pass"
    FAIL = "fail"
    NO_THRESHOLDS = "no thresholds set"


@dataclass(frozen=True)
class RoiRow:
    """One ROI of one case: the AI contour against the reference (truth or approved).

    ``status``: ``compared``, ``no reference`` (the case has no such ROI in its truth), or a
    :class:`QaStatus` value. Volumes in cm3, distances and lengths in mm."""

    case: str
    study_uid: str
    model: str
    model_version: str
    roi: str
    reference_roi: str
    status: str
    dice: float | None = None
    hd: float | None = None
    hd95: float | None = None
    msd: float | None = None
    surface_dice: float | None = None
    apl: float | None = None
    volume_ai: float | None = None
    volume_ref: float | None = None
    volume_change: float | None = None
    unchanged: bool = False
    tolerance_mm: float | None = None
    apl_tolerance_mm: float | None = None
    passed: bool | None = None
    date: str = ""
    note: str = ""

    @property
    def scored(self) -> bool:
        return self.status == QaStatus.COMPARED.value

    @classmethod
    def of(cls, metrics: RoiMetrics, **fields: object) -> RoiRow:
        values = dataclasses.asdict(metrics)
        values["volume_ref"] = values.pop("volume_approved")
        return cls(status=QaStatus.COMPARED.value, **values, **fields)  # type: ignore[arg-type]


COLUMNS = [f.name for f in dataclasses.fields(RoiRow)]
SUMMARY_METRICS = ("dice", "hd95", "surface_dice", "apl")


@dataclass(frozen=True)
class RoiSummary:
    """One model version and ROI over the cases: median and quartiles per metric, verdict."""

    model: str
    model_version: str
    roi: str
    cases: int  # rows of this ROI
    scored: int  # rows compared
    stats: dict[str, tuple[float, float, float] | None]  # metric -> (q1, median, q3)
    unchanged_pct: float | None
    deleted_pct: float | None
    verdict: Verdict
    reasons: tuple[str, ...] = ()


@dataclass
class Report:
    """What a report shows; ``overlays`` by (case, ROI) for the worst cases, when available."""

    title: str
    kind: str  # "validation" or "monitoring"
    reference: str  # what the AI is compared with: "truth" or "approved"
    provenance: list[tuple[str, str]]
    rows: list[RoiRow]
    summaries: list[RoiSummary]
    verdict: Verdict
    notes: list[str] = field(default_factory=list)
    overlays: dict[tuple[str, str], OverlaySlice] = field(default_factory=dict)
    # Monitoring: control charts (title, PNG) and the period's alarms and incidents.
    control_charts: list[tuple[str, bytes]] = field(default_factory=list)
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (when, what, text)


@dataclass(frozen=True)
class ReportFiles:
    html: Path
    csv: Path
    summary_csv: Path


# ---------------------------------------------------------------------------------------------
# Acceptance and summaries


def _failures(values: Mapping[str, float | None], acc: RoiAcceptance) -> list[str]:
    checks = (
        ("dice", acc.dice_min, True),
        ("hd95", acc.hd95_max_mm, False),
        ("surface_dice", acc.surface_dice_min, True),
        ("apl", acc.apl_max_mm, False),
    )
    out = []
    for metric, limit, higher in checks:
        if limit is None:
            continue
        v = values.get(metric)
        if v is None or (v < limit if higher else v > limit):
            shown = "none" if v is None else f"{v:.3g}"
            out.append(f"{metric} {shown} {'<' if higher else '>'} {limit:g}")
    return out


def _has_thresholds(acc: RoiAcceptance) -> bool:
    return any(v is not None for v in acc.model_dump().values())


def judge_row(row: RoiRow, qa: ModelQa | None) -> bool | None:
    """Whether this one case meets the ROI's thresholds (None: none set, or not scored)."""
    acc = qa.acceptance_for(row.roi) if qa else RoiAcceptance()
    if not _has_thresholds(acc) or not row.scored:
        return None
    return not _failures(dataclasses.asdict(row), acc)


def summarise(rows: Sequence[RoiRow], acceptance: Mapping[str, ModelQa]) -> list[RoiSummary]:
    """Per model version and ROI, in order of first appearance; ``acceptance`` by model name."""
    groups: dict[tuple[str, str, str], list[RoiRow]] = {}
    for r in rows:
        if r.roi:
            groups.setdefault((r.model, r.model_version, r.roi), []).append(r)
    out = []
    for (model, version, roi), members in groups.items():
        scored = [r for r in members if r.scored]
        stats: dict[str, tuple[float, float, float] | None] = {}
        for metric in SUMMARY_METRICS:
            q = quartiles([v for r in scored if (v := getattr(r, metric)) is not None])
            stats[metric] = (q["q25"], q["median"], q["q75"]) if q["n"] else None
        qa = acceptance.get(model)
        acc = qa.acceptance_for(roi) if qa else RoiAcceptance()
        if not _has_thresholds(acc):
            verdict, reasons = Verdict.NO_THRESHOLDS, []
        elif not scored:
            verdict, reasons = Verdict.FAIL, ["no case scored"]
        else:
            medians = {m: (s[1] if s else None) for m, s in stats.items()}
            reasons = ["median " + f for f in _failures(medians, acc)]
            verdict = Verdict.FAIL if reasons else Verdict.PASS
        n = len(members)
        deleted = sum(r.status == QaStatus.DELETED.value for r in members)
        out.append(
            RoiSummary(
                model,
                version,
                roi,
                n,
                len(scored),
                stats,
                100.0 * sum(r.unchanged for r in scored) / len(scored) if scored else None,
                100.0 * deleted / n if n else None,
                verdict,
                tuple(reasons),
            )
        )
    return out


def overall(summaries: Sequence[RoiSummary], failed_cases: int = 0) -> Verdict:
    """Fail when any ROI fails or any case could not be run; pass only when every ROI passes."""
    if failed_cases or any(s.verdict is Verdict.FAIL for s in summaries) or not summaries:
        return Verdict.FAIL
    if any(s.verdict is Verdict.NO_THRESHOLDS for s in summaries):
        return Verdict.NO_THRESHOLDS
    return Verdict.PASS


# ---------------------------------------------------------------------------------------------
# Writing


def _fmt(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _group_label(rows: Sequence[RoiRow]) -> dict[int, str]:
    versions = {(r.model, r.model_version) for r in rows}
    return {
        id(r): r.roi if len(versions) == 1 else f"{r.roi}\n{r.model} {r.model_version}"
        for r in rows
    }


def write_report(report: Report, out_dir: Path, stem: str = "report") -> ReportFiles:
    """Write ``<stem>.html``, ``<stem>.csv`` (one row per case and ROI) and
    ``<stem>-summary.csv`` (one row per model version and ROI) into ``out_dir``."""
    import jinja2

    out_dir.mkdir(parents=True, exist_ok=True)
    files = ReportFiles(
        out_dir / f"{stem}.html", out_dir / f"{stem}.csv", out_dir / f"{stem}-summary.csv"
    )
    with files.csv.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for r in report.rows:
            w.writerow([_fmt(getattr(r, c)) for c in COLUMNS])
    stat_cols = [f"{m}_{q}" for m in SUMMARY_METRICS for q in ("q1", "median", "q3")]
    with files.summary_csv.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(
            ["model", "model_version", "roi", "cases", "scored", *stat_cols]
            + ["unchanged_pct", "deleted_pct", "verdict", "reasons"]
        )
        for s in report.summaries:
            stats = [_fmt(v) for m in SUMMARY_METRICS for v in (s.stats[m] or (None,) * 3)]
            w.writerow(
                [s.model, s.model_version, s.roi, s.cases, s.scored, *stats]
                + [_fmt(s.unchanged_pct), _fmt(s.deleted_pct), s.verdict.value]
                + ["; ".join(s.reasons)]
            )

    scored = [r for r in report.rows if r.scored]
    labels = _group_label(scored)
    groups: dict[str, list[RoiRow]] = {}
    for r in scored:
        groups.setdefault(labels[id(r)], []).append(r)
    worst = sorted((r for r in scored if r.dice is not None), key=lambda r: r.dice or 0.0)
    worst_items = []
    for r in worst[:WORST]:
        ov = report.overlays.get((r.case, r.roi))
        title = f"{r.case}: {r.roi} (Dice {r.dice:.3f})"
        image = _data_uri(plots.overlay(ov, title, report.reference)) if ov else None
        worst_items.append({"row": r, "image": image})
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    env.filters["fmt"] = _fmt
    source = importlib.resources.files("gateway.qa").joinpath("report.html.j2").read_text("utf-8")
    html = env.from_string(source).render(
        report=report,
        columns=COLUMNS,
        metrics=SUMMARY_METRICS,
        generated=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        metric_plot=_data_uri(plots.metric_plots(groups)) if groups else None,
        bland_altman=_data_uri(plots.bland_altman(groups, report.reference)) if groups else None,
        worst=worst_items,
        control_charts=[(t, _data_uri(png)) for t, png in report.control_charts],
    )
    files.html.write_text(html, encoding="utf-8")
    return files


# ---------------------------------------------------------------------------------------------
# The monthly monitoring report


def monitoring_report(
    records: Sequence[QaRecord],
    since: float,
    until: float,
    out_dir: Path,
    *,
    acceptance: Mapping[str, ModelQa] | None = None,
    software_version: str = "",
    stem: str = "qa-report",
    drift: Sequence[Any] = (),
    events: Sequence[tuple[float, str, str]] = (),
) -> ReportFiles:
    """The monitoring report of the approved structure sets compared in ``[since, until)``
    (epoch seconds): the same tables and figures as the validation report, the reference being
    what the clinicians approved. ``acceptance`` (model name -> model.yaml ``qa``) adds verdicts.
    ``drift``: the control charts (:class:`gateway.qa.drift.RoiDrift`, evaluated over all cases,
    not only the period's); ``events``: (when, kind, text) of the period's alarms and incidents.
    """
    acceptance = acceptance or {}
    chosen = sorted((r for r in records if since <= r.at < until), key=lambda r: r.at)
    rows = [_row_of(r, acceptance.get(r.model)) for r in chosen]
    summaries = summarise(rows, acceptance)

    def day(t: float) -> str:
        return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%Y-%m-%d")

    studies = {r.study_uid for r in chosen}
    versions = sorted({f"{r.model} {r.model_version}" for r in chosen})
    report = Report(
        title=f"AIRCON clinical QA report {day(since)} to {day(until)}",
        kind="monitoring",
        reference="approved",
        provenance=[
            ("Period", f"{day(since)} to {day(until)} (UTC)"),
            ("Model versions", ", ".join(versions) or "none"),
            ("Approved structure sets", str(len({r.approved_uid for r in chosen}))),
            ("Studies", str(len(studies))),
            ("AIRCON version", software_version or "unknown"),
        ],
        rows=rows,
        summaries=summaries,
        verdict=overall(summaries) if rows else Verdict.NO_THRESHOLDS,
        notes=[] if rows else ["no approved structure set was compared in this period"],
        control_charts=[
            (
                f"{d.key.model} {d.key.model_version} {d.key.roi}: {d.state.value}",
                plots.control_chart(f"{d.key.model} {d.key.model_version} {d.key.roi}", d.charts),
            )
            for d in drift
        ],
        events=[(day(t), kind, text) for t, kind, text in sorted(events)],
    )
    return write_report(report, out_dir, stem)


def _row_of(r: QaRecord, qa: ModelQa | None) -> RoiRow:
    when = datetime.datetime.fromtimestamp(r.at, datetime.timezone.utc).strftime("%Y-%m-%d")
    row = RoiRow(
        case=f"job {r.job_id}",
        study_uid=r.study_uid,
        model=r.model,
        model_version=r.model_version,
        roi=r.roi,
        reference_roi=r.approved_roi,
        status=r.status.value,
        dice=r.dice,
        hd=r.hd,
        hd95=r.hd95,
        msd=r.msd,
        surface_dice=r.surface_dice,
        apl=r.apl,
        volume_ai=r.volume_ai,
        volume_ref=r.volume_approved,
        volume_change=r.volume_change,
        unchanged=r.unchanged,
        tolerance_mm=r.tolerance_mm,
        apl_tolerance_mm=r.apl_tolerance_mm,
        date=when,
    )
    return dataclasses.replace(row, passed=judge_row(row, qa))
