"""Control charts, drift alarms and incident candidates per model version and ROI (pure).

The full method, with the reasons for each choice, is in ``docs/qa-drift.md``. In short:

*Points.* The QA rows of one (model, model_version, roi) are put in time order (``at``, then job
id). When a job was answered by several approved structure sets only the rows of the latest one
count. Every *compared* row is a case; its surface Dice and its added path length (APL, mm) are a
point on the metric's chart (a None value is no point on that chart). A *deleted* ROI is no chart
point (a deletion is a clinical decision, not a contour quality) but always an incident candidate.
Added ROIs have no AI counterpart and are ignored here.

*EWMA charts* (Roberts 1959; Montgomery, Introduction to Statistical Quality Control, 9.2):
``z_i = lam x_i + (1 - lam) z_{i-1}``, ``z_0 = mu0``, limits
``mu0 +- L sigma0 sqrt(lam / (2 - lam) (1 - (1 - lam)^(2 i)))`` with ``lam`` =
``ewma_lambda`` and ``L`` = ``limit_sigma``. The baseline ``(mu0, sigma0)`` of a chart is the
model.yaml ``qa.baseline`` of the ROI when it gives one for that metric (every point is then
judged, i = 1 at the first), else the mean and sample standard deviation of the chart's first
``baseline_cases`` points, which are then not judged (i = 1 at the next point). sigma0 is never
below ``min_sigma_*``: a run of unchanged contours has no spread. One-sided: surface Dice is out
of control only below its lower limit, APL only above its upper limit (better is not drift).

*Alarms.* One per excursion: raised at the first case where either chart is out of control;
no other while any chart stays out (a chart keeps the state of its latest point); the next only
after both are back inside. Charts are causal and the baseline is fixed once taken, so
re-evaluating after more cases gives the same alarm with the same key.

*Incident candidates*, per case: a deleted ROI; Dice < ``candidate_dice``; a single value
beyond ``far_factor`` times the individual-value limit distance ``L sigma0`` from the centre on
the bad side (surface Dice below ``mu0 - far_factor L sigma0``, APL above
``mu0 + far_factor L sigma0``; judged points only).
"""

from __future__ import annotations

import enum
import json
import math
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from gateway.db.records import QaRecord, QaStatus
from gateway.qa_policy import ControlChartConfig, QaConfig
from gateway.segment.spec import RoiBaseline

# A single case this many individual-value limit distances (L sigma0) from the centre is far out.
FAR_FACTOR = 2.0


class ChartMetric(str, enum.Enum):
    SURFACE_DICE = "surface_dice"
    APL = "apl"

    @property
    def label(self) -> str:
        return "surface Dice" if self is ChartMetric.SURFACE_DICE else "APL"


class DriftState(str, enum.Enum):
    NO_DATA = "no_data"  # no compared case with a value yet
    BASELINE = "baseline"  # collecting the baseline: nothing judged yet
    IN_CONTROL = "in_control"
    OUT_OF_CONTROL = "out_of_control"


class CandidateReason(str, enum.Enum):
    DELETED = "deleted"
    LOW_DICE = "low_dice"
    FAR_OUTSIDE = "far_outside"


@dataclass(frozen=True, order=True)
class RoiKey:
    model: str
    model_version: str
    roi: str


@dataclass(frozen=True)
class ChartPoint:
    """One case on one chart. ``case`` is the 1-based index of the compared case of the ROI."""

    case: int
    job_id: int
    at: float
    value: float
    baseline: bool  # one of the first cases the baseline was taken from: not judged
    ewma: float | None = None  # None while the baseline is being collected or for its points
    lower: float | None = None
    upper: float | None = None
    out: bool = False  # beyond the limit on the bad side


@dataclass(frozen=True)
class Chart:
    metric: ChartMetric
    centre: float | None  # mu0; None while the baseline is being collected
    sigma: float | None  # sigma0 after the floor
    baseline_source: str  # "model.yaml", "first N cases" or "collecting (n of N)"
    points: tuple[ChartPoint, ...]

    @property
    def out(self) -> bool:
        """The chart's state: that of its latest judged point."""
        judged = [p for p in self.points if p.ewma is not None]
        return bool(judged) and judged[-1].out


@dataclass(frozen=True)
class DriftAlarm:
    """The start of one excursion; everything in it is fixed by the first case out of control."""

    model: str
    model_version: str
    roi: str
    job_id: int  # the first case out of control
    at: float
    case: int
    metrics: tuple[ChartMetric, ...]  # the charts out of control at that case
    message: str

    @property
    def key(self) -> str:
        """Stable identity for storing the alarm idempotently."""
        return json.dumps(["drift", self.model, self.model_version, self.roi, self.job_id])


@dataclass(frozen=True)
class IncidentCandidate:
    model: str
    model_version: str
    roi: str
    job_id: int
    study_uid: str
    at: float
    reason: CandidateReason
    message: str

    @property
    def key(self) -> str:
        return json.dumps(["candidate", self.job_id, self.roi, self.reason.value])


@dataclass(frozen=True)
class RoiDrift:
    """The charts, alarms and incident candidates of one (model, model_version, roi)."""

    key: RoiKey
    state: DriftState
    since_job_id: int | None  # first case of the current excursion (when out of control)
    since_at: float | None
    metrics_out: tuple[ChartMetric, ...]  # charts out of control now
    charts: tuple[Chart, ...]  # surface Dice, APL
    alarms: tuple[DriftAlarm, ...]
    candidates: tuple[IncidentCandidate, ...]


def latest_sets(records: Iterable[QaRecord]) -> list[QaRecord]:
    """The rows of the latest approved structure set of each job, in time order."""
    rows = list(records)
    newest: dict[int, tuple[float, int, str]] = {}
    for r in rows:
        rank = (r.at, r.id or 0, r.approved_uid)
        if r.job_id not in newest or rank > newest[r.job_id]:
            newest[r.job_id] = rank
    keep = [r for r in rows if r.approved_uid == newest[r.job_id][2]]
    return sorted(keep, key=lambda r: (r.at, r.job_id, r.id or 0))


def ewma_limit_width(i: int, sigma0: float, lam: float, limit_sigma: float) -> float:
    """Distance of the EWMA limits from the centre at the i-th judged point (i >= 1)."""
    return limit_sigma * sigma0 * math.sqrt(lam / (2 - lam) * (1 - (1 - lam) ** (2 * i)))


def _value(record: QaRecord, metric: ChartMetric) -> float | None:
    return record.surface_dice if metric is ChartMetric.SURFACE_DICE else record.apl


def _baseline_of(metric: ChartMetric, baseline: RoiBaseline | None) -> tuple[float, float] | None:
    if baseline is None:
        return None
    return baseline.surface_dice if metric is ChartMetric.SURFACE_DICE else baseline.apl_mm


def _chart(
    metric: ChartMetric,
    cases: Sequence[QaRecord],
    control: ControlChartConfig,
    baseline: RoiBaseline | None,
) -> Chart:
    floor = (
        control.min_sigma_surface_dice
        if metric is ChartMetric.SURFACE_DICE
        else control.min_sigma_apl_mm
    )
    series = [
        (n, r, v) for n, r in enumerate(cases, start=1) if (v := _value(r, metric)) is not None
    ]
    given = _baseline_of(metric, baseline)
    if given is not None:
        mu0, sd, skip, source = given[0], given[1], 0, "model.yaml"
    else:
        skip = control.baseline_cases
        first = [v for _, _, v in series[:skip]]
        if len(first) < skip:
            points = tuple(ChartPoint(n, r.job_id, r.at, v, baseline=True) for n, r, v in series)
            return Chart(metric, None, None, f"collecting ({len(first)} of {skip})", points)
        mu0, sd, source = statistics.fmean(first), statistics.stdev(first), f"first {skip} cases"
    sigma0 = max(sd, floor)
    lam, big_l = control.ewma_lambda, control.limit_sigma
    out_points: list[ChartPoint] = []
    z = mu0
    for k, (n, r, v) in enumerate(series):
        if k < skip:
            out_points.append(ChartPoint(n, r.job_id, r.at, v, baseline=True))
            continue
        z = lam * v + (1 - lam) * z
        width = ewma_limit_width(k - skip + 1, sigma0, lam, big_l)
        lower, upper = mu0 - width, mu0 + width
        out = z < lower if metric is ChartMetric.SURFACE_DICE else z > upper
        out_points.append(ChartPoint(n, r.job_id, r.at, v, False, z, lower, upper, out))
    return Chart(metric, mu0, sigma0, source, tuple(out_points))


def _fmt(metric: ChartMetric, value: float) -> str:
    return f"{value:.3f}" if metric is ChartMetric.SURFACE_DICE else f"{value:.1f} mm"


def _alarm_message(key: RoiKey, case: int, points: dict[ChartMetric, ChartPoint]) -> str:
    parts = []
    for metric, p in points.items():
        low = metric is ChartMetric.SURFACE_DICE
        side, limit = ("below lower", p.lower) if low else ("above upper", p.upper)
        assert p.ewma is not None and limit is not None
        parts.append(
            f"{metric.label} EWMA {_fmt(metric, p.ewma)} {side} limit {_fmt(metric, limit)}"
        )
    return (
        f"{key.roi} ({key.model} {key.model_version}): drift from case {case} "
        f"(job {next(iter(points.values())).job_id}): " + "; ".join(parts)
    )


def _candidates(
    key: RoiKey,
    rows: Sequence[QaRecord],
    charts: Sequence[Chart],
    candidate_dice: float,
    far_factor: float | None,
    limit_sigma: float,
) -> list[IncidentCandidate]:
    found: list[IncidentCandidate] = []

    def add(r: QaRecord, reason: CandidateReason, message: str) -> None:
        found.append(
            IncidentCandidate(
                key.model, key.model_version, key.roi, r.job_id, r.study_uid, r.at, reason, message
            )
        )

    far: dict[int, list[str]] = defaultdict(list)
    if far_factor is not None:
        for chart in charts:
            if chart.centre is None or chart.sigma is None:
                continue
            reach = far_factor * limit_sigma * chart.sigma
            was_out = False
            for p in chart.points:
                if p.baseline:
                    continue
                # Inside an excursion the chart's one alarm speaks for every case after its
                # first: a sustained drift is one event, not a candidate per case.
                inside, was_out = was_out, p.out
                if inside and p.out:
                    continue
                low = chart.metric is ChartMetric.SURFACE_DICE
                if (p.value < chart.centre - reach) if low else (p.value > chart.centre + reach):
                    bound = chart.centre - reach if low else chart.centre + reach
                    far[p.job_id].append(
                        f"{chart.metric.label} {_fmt(chart.metric, p.value)} "
                        f"{'<' if low else '>'} {_fmt(chart.metric, bound)}"
                    )
    for r in rows:
        if r.status is QaStatus.DELETED:
            add(r, CandidateReason.DELETED, f"{key.roi} deleted by the clinician")
            continue
        if r.dice is not None and r.dice < candidate_dice:
            add(r, CandidateReason.LOW_DICE, f"{key.roi}: Dice {r.dice:.2f} < {candidate_dice:g}")
        if r.job_id in far:
            add(
                r,
                CandidateReason.FAR_OUTSIDE,
                f"{key.roi}: far outside the control limits: " + "; ".join(far[r.job_id]),
            )
    return found


def evaluate(
    records: Iterable[QaRecord],
    control: ControlChartConfig,
    *,
    candidate_dice: float,
    baseline: RoiBaseline | None = None,
    far_factor: float | None = FAR_FACTOR,
) -> RoiDrift:
    """Charts, alarms and incident candidates of the rows of ONE (model, model_version, roi).

    Rows may come in any order; added rows are ignored. ``baseline``: the model.yaml baseline of
    the ROI (``ModelQa.baseline_for(roi)``), else the first ``baseline_cases`` points.
    ``far_factor=None`` turns the far-outside incident candidate off.
    """
    rows = [r for r in latest_sets(records) if r.status is not QaStatus.ADDED]
    keys = {RoiKey(r.model, r.model_version, r.roi) for r in rows}
    if len(keys) != 1:
        raise ValueError(f"evaluate() needs the rows of one model version and ROI, got {keys}")
    key = keys.pop()
    cases = [r for r in rows if r.status is QaStatus.COMPARED]
    charts = tuple(_chart(m, cases, control, baseline) for m in ChartMetric)

    by_case: dict[int, dict[ChartMetric, ChartPoint]] = defaultdict(dict)
    for chart in charts:
        for p in chart.points:
            if not p.baseline:
                by_case[p.case][chart.metric] = p
    chart_out = dict.fromkeys(ChartMetric, False)
    alarms: list[DriftAlarm] = []
    since: DriftAlarm | None = None
    for case in sorted(by_case):
        points = by_case[case]
        for metric, p in points.items():
            chart_out[metric] = p.out
        if any(chart_out.values()):
            if since is None:
                out_now = {m: p for m, p in points.items() if p.out}
                first = next(iter(out_now.values()))
                since = DriftAlarm(
                    key.model,
                    key.model_version,
                    key.roi,
                    first.job_id,
                    first.at,
                    case,
                    tuple(out_now),
                    _alarm_message(key, case, out_now),
                )
                alarms.append(since)
        else:
            since = None

    metrics_out = tuple(m for m in ChartMetric if chart_out[m])
    if since is not None:
        state = DriftState.OUT_OF_CONTROL
    elif by_case:
        state = DriftState.IN_CONTROL
    elif any(chart.points for chart in charts):
        state = DriftState.BASELINE
    else:
        state = DriftState.NO_DATA
    candidates = _candidates(key, rows, charts, candidate_dice, far_factor, control.limit_sigma)
    return RoiDrift(
        key=key,
        state=state,
        since_job_id=since.job_id if since else None,
        since_at=since.at if since else None,
        metrics_out=metrics_out,
        charts=charts,
        alarms=tuple(alarms),
        candidates=tuple(candidates),
    )


def evaluate_all(
    records: Iterable[QaRecord],
    qa: QaConfig,
    baseline_for: Callable[[RoiKey], RoiBaseline | None] = lambda key: None,
) -> list[RoiDrift]:
    """:func:`evaluate` for every (model, model_version, roi) in ``records``, sorted by key.

    ``baseline_for`` gives the model.yaml baseline of a key, e.g.
    ``lambda k: specs[k.model].qa.baseline_for(k.roi)`` when the version is the loaded one.
    """
    groups: dict[RoiKey, list[QaRecord]] = defaultdict(list)
    for r in latest_sets(records):
        if r.status is not QaStatus.ADDED:
            groups[RoiKey(r.model, r.model_version, r.roi)].append(r)
    return [
        evaluate(
            groups[key],
            qa.control,
            candidate_dice=qa.candidate_dice,
            baseline=baseline_for(key),
        )
        for key in sorted(groups)
    ]
