"""Control charts on surface Dice and APL: a drift raises one alarm, a stable ROI none."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gateway.db.records import QaRecord, QaStatus
from gateway.qa.drift import (
    CandidateReason,
    ChartMetric,
    DriftState,
    RoiDrift,
    RoiKey,
    evaluate,
    evaluate_all,
)
from gateway.qa_policy import ControlChartConfig, QaConfig
from gateway.segment.spec import RoiBaseline

CONTROL = ControlChartConfig()  # baseline 20 cases, lambda 0.2, L = 3
DAY = 86400.0


def row(job: int, roi: str, status: QaStatus = QaStatus.COMPARED, **metrics: object) -> QaRecord:
    return QaRecord(
        job_id=job,
        study_uid=f"1.2.3.{job}",
        model="pelvis",
        model_version=str(metrics.pop("version", "1.0")),
        roi=roi,
        approved_roi=roi if status is not QaStatus.DELETED else "",
        status=status,
        ai_uid=f"1.2.4.{job}",
        approved_uid=str(metrics.pop("approved_uid", f"1.2.5.{job}")),
        at=float(metrics.pop("at", 1_700_000_000 + job * DAY)),
        **metrics,  # type: ignore[arg-type]
    )


def clinic_case(rng: np.random.Generator, job: int, roi: str, edited_3mm: bool) -> QaRecord:
    """One ROI as the clinician left it. Most AI contours are approved unchanged (surface Dice 1,
    APL 0); about a third get a small touch-up: a few mm redrawn on one or two slices, so
    surface Dice at 2 mm 0.90-0.98 and APL 5-40 mm. The drifted prostate is moved out by 3 mm
    over the apex and base, about a third of its surface: that part leaves the 2 mm tolerance
    (surface Dice 0.60-0.75), and on the 2-3 slices it touches 30-50 mm of the ~140 mm
    perimeter is redrawn (APL 60-150 mm)."""
    if edited_3mm:
        sdice, apl, dice = rng.uniform(0.60, 0.75), rng.uniform(60, 150), rng.uniform(0.80, 0.88)
    elif rng.random() < 0.35:
        sdice, apl, dice = rng.uniform(0.90, 0.98), rng.uniform(5, 40), rng.uniform(0.93, 0.99)
    else:
        sdice, apl, dice = 1.0, 0.0, 1.0
    return row(job, roi, dice=dice, surface_dice=sdice, apl=apl, unchanged=sdice == 1.0, hd95=0.0)


def simulated_clinic(n: int = 30, drift_from: int = 21, seed: int = 10) -> list[QaRecord]:
    rng = np.random.default_rng(seed)
    rows = []
    for job in range(1, n + 1):
        rows.append(clinic_case(rng, job, "Prostate", edited_3mm=job >= drift_from))
        rows.append(clinic_case(rng, job, "Bladder", edited_3mm=False))
    return rows


def by_roi(results: list[RoiDrift], roi: str) -> RoiDrift:
    return next(r for r in results if r.key.roi == roi)


def test_drift_of_the_last_10_prostates_raises_one_alarm_and_none_for_the_bladder() -> None:
    results = evaluate_all(simulated_clinic(), QaConfig())
    prostate, bladder = by_roi(results, "Prostate"), by_roi(results, "Bladder")

    assert len(prostate.alarms) == 1
    alarm = prostate.alarms[0]
    assert (alarm.model, alarm.model_version, alarm.roi) == ("pelvis", "1.0", "Prostate")
    assert alarm.job_id == 21  # the first drifted case: both charts leave at once
    assert set(alarm.metrics) == {ChartMetric.SURFACE_DICE, ChartMetric.APL}
    assert "Prostate" in alarm.message and "surface Dice" in alarm.message
    assert prostate.state is DriftState.OUT_OF_CONTROL and prostate.since_job_id == 21
    # The 20 baseline cases are plotted but not judged.
    sdice = prostate.charts[0]
    assert sdice.metric is ChartMetric.SURFACE_DICE and sdice.baseline_source == "first 20 cases"
    assert [p.baseline for p in sdice.points] == [True] * 20 + [False] * 10
    assert all(p.out for p in sdice.points[20:])

    assert bladder.alarms == () and bladder.state is DriftState.IN_CONTROL

    # Re-evaluated after the next approved structure set: the same excursion, the same alarm.
    more = simulated_clinic(n=31)
    again = by_roi(evaluate_all(more, QaConfig()), "Prostate")
    assert again.alarms == prostate.alarms
    assert again.alarms[0].key == alarm.key


def test_drift_alarm_is_raised_for_its_model_version_only() -> None:
    old = simulated_clinic(seed=3, drift_from=99)
    new = [
        row(
            r.job_id + 100,
            r.roi,
            version="2.0",
            dice=r.dice,
            surface_dice=r.surface_dice,
            apl=r.apl,
        )
        for r in simulated_clinic(seed=4)
    ]
    results = {(r.key.model_version, r.key.roi): r for r in evaluate_all(old + new, QaConfig())}
    assert [k for k, r in sorted(results.items()) if r.alarms] == [("2.0", "Prostate")]


def test_a_new_alarm_only_after_both_charts_came_back() -> None:
    good = {"surface_dice": 1.0, "apl": 0.0, "dice": 1.0}
    bad_sdice = {"surface_dice": 0.5, "apl": 0.0, "dice": 0.9}
    bad_apl = {"surface_dice": 1.0, "apl": 300.0, "dice": 0.9}
    # Out on surface Dice, then on APL while surface Dice recovers: one excursion.
    series = [good] * 20 + [bad_sdice] * 3 + [bad_apl] * 2 + [good] * 20 + [bad_sdice] * 3
    rows = [row(j, "Rectum", **m) for j, m in enumerate(series, start=1)]
    result = evaluate(rows, CONTROL, candidate_dice=0.5)
    assert [a.job_id for a in result.alarms] == [21, 46]
    assert result.alarms[0].metrics == (ChartMetric.SURFACE_DICE,)


def test_a_deleted_roi_is_an_incident_candidate_and_not_a_chart_point() -> None:
    rows = simulated_clinic()
    rows.append(row(31, "Bladder", QaStatus.DELETED))
    bladder = by_roi(evaluate_all(rows, QaConfig()), "Bladder")
    deleted = [c for c in bladder.candidates if c.reason is CandidateReason.DELETED]
    assert [(c.job_id, c.message) for c in deleted] == [(31, "Bladder deleted by the clinician")]
    assert deleted[0].key == '["candidate", 31, "Bladder", "deleted"]'
    assert all(p.job_id != 31 for chart in bladder.charts for p in chart.points)
    assert bladder.alarms == ()


def test_a_low_dice_case_is_an_incident_candidate() -> None:
    rows = [row(j, "Prostate", dice=1.0, surface_dice=1.0, apl=0.0) for j in range(1, 6)]
    rows.append(row(6, "Prostate", dice=0.31, surface_dice=0.4, apl=200.0))
    result = evaluate(rows, CONTROL, candidate_dice=0.5, far_factor=None)
    assert [(c.job_id, c.reason, c.message) for c in result.candidates] == [
        (6, CandidateReason.LOW_DICE, "Prostate: Dice 0.31 < 0.5")
    ]
    assert result.state is DriftState.BASELINE  # 6 of 20 baseline cases: nothing judged


def test_a_single_case_far_outside_the_limits_is_a_candidate() -> None:
    rows = [row(j, "Bladder", dice=1.0, surface_dice=1.0, apl=0.0) for j in range(1, 21)]
    rows.append(row(21, "Bladder", dice=0.9, surface_dice=0.85, apl=20.0))  # 7.5 sigma0 low
    rows.append(row(22, "Bladder", dice=0.95, surface_dice=0.95, apl=50.0))  # within 6 sigma0
    result = evaluate(rows, CONTROL, candidate_dice=0.5)
    assert [(c.job_id, c.reason) for c in result.candidates] == [(21, CandidateReason.FAR_OUTSIDE)]
    assert "surface Dice 0.850 < 0.880" in result.candidates[0].message


def test_a_stable_series_without_edits_raises_nothing() -> None:
    rows = [
        row(j, roi, dice=1.0, surface_dice=1.0, apl=0.0, unchanged=True)
        for j in range(1, 41)
        for roi in ("Prostate", "Bladder")
    ]
    for result in evaluate_all(rows, QaConfig()):
        assert result.state is DriftState.IN_CONTROL
        assert result.alarms == () and result.candidates == ()
        sdice, apl = result.charts
        # No spread: sigma0 is the floor, the centre the constant value.
        assert (sdice.centre, sdice.sigma) == (1.0, CONTROL.min_sigma_surface_dice)
        assert (apl.centre, apl.sigma) == (0.0, CONTROL.min_sigma_apl_mm)


def test_ewma_and_limits_match_a_hand_calculation() -> None:
    control = ControlChartConfig(baseline_cases=3, ewma_lambda=0.5, limit_sigma=2.0)
    values = [0.9, 1.0, 0.95, 0.8, 0.7]
    rows = [row(j, "Prostate", surface_dice=v, apl=None) for j, v in enumerate(values, start=1)]
    chart = evaluate(rows, control, candidate_dice=0.5).charts[0]
    # Baseline: mean 0.95, sample sd 0.05. z1 = 0.5*0.8 + 0.5*0.95 = 0.875,
    # z2 = 0.5*0.7 + 0.5*0.875 = 0.7875. Limit width L sigma sqrt(lam/(2-lam)(1-(1-lam)^2i)):
    # i=1: 2*0.05*sqrt(1/3*0.75) = 0.05; i=2: 2*0.05*sqrt(1/3*0.9375) = 0.0559017.
    assert chart.centre == pytest.approx(0.95) and chart.sigma == pytest.approx(0.05)
    p1, p2 = chart.points[3:]
    assert p1.ewma == pytest.approx(0.875) and p2.ewma == pytest.approx(0.7875)
    assert p1.lower == pytest.approx(0.90) and p1.upper == pytest.approx(1.00)
    assert p2.lower == pytest.approx(0.95 - 0.1 * math.sqrt(0.3125))
    assert (p1.out, p2.out) == (True, True)
    assert chart.points[0].ewma is None and chart.points[0].baseline


def test_apl_chart_alarms_above_only_and_surface_dice_below_only() -> None:
    control = ControlChartConfig(baseline_cases=3)
    base = [(0.9, 50.0), (0.95, 40.0), (0.85, 60.0)]
    better = [(1.0, 0.0)] * 10  # fewer edits than in the baseline: not drift
    rows = [row(j, "Rectum", surface_dice=s, apl=a) for j, (s, a) in enumerate(base + better, 1)]
    result = evaluate(rows, control, candidate_dice=0.5)
    sdice, apl = result.charts
    assert any(
        p.ewma is not None and p.upper is not None and p.ewma > p.upper for p in sdice.points
    )
    assert any(p.ewma is not None and p.lower is not None and p.ewma < p.lower for p in apl.points)
    assert result.alarms == () and result.state is DriftState.IN_CONTROL


def test_baseline_from_model_yaml_instead_of_the_first_cases() -> None:
    baseline = RoiBaseline(surface_dice=(0.95, 0.04), apl_mm=(20.0, 5.0))
    rows = [
        row(1, "Prostate", surface_dice=0.95, apl=20.0),
        row(2, "Prostate", surface_dice=0.75, apl=80.0),
    ]
    result = evaluate(rows, CONTROL, candidate_dice=0.5, baseline=baseline)
    sdice, apl = result.charts
    assert sdice.baseline_source == "model.yaml"
    assert (sdice.centre, sdice.sigma) == (0.95, 0.04)
    # sigma below the floor is floored (5 mm < 10 mm).
    assert (apl.centre, apl.sigma) == (20.0, CONTROL.min_sigma_apl_mm)
    # Judged from the first case: z2 = 0.2*0.75 + 0.8*0.95 = 0.91;
    # lower limit 0.95 - 3*0.04*sqrt(0.2/1.8*(1-0.8^4)) = 0.95 - 0.030747.
    assert not any(p.baseline for p in sdice.points)
    assert sdice.points[1].ewma == pytest.approx(0.91)
    assert sdice.points[1].lower == pytest.approx(0.95 - 0.12 * math.sqrt(0.2 / 1.8 * 0.5904))
    assert result.state is DriftState.OUT_OF_CONTROL
    assert [a.job_id for a in result.alarms] == [2]


def test_only_the_latest_approved_set_of_a_job_counts() -> None:
    rows = [row(j, "Prostate", surface_dice=1.0, apl=0.0) for j in range(1, 21)]
    rows.append(row(21, "Prostate", surface_dice=0.5, apl=300.0, approved_uid="first"))
    rows.append(
        row(21, "Prostate", surface_dice=1.0, apl=0.0, approved_uid="second", at=rows[-1].at + 60)
    )
    result = evaluate(rows, CONTROL, candidate_dice=0.5)
    assert [p.value for p in result.charts[0].points][-1] == 1.0
    assert len(result.charts[0].points) == 21 and result.alarms == ()


def test_rows_of_several_rois_are_refused_and_no_rows_give_no_results() -> None:
    with pytest.raises(ValueError):
        evaluate([row(1, "Prostate"), row(1, "Bladder")], CONTROL, candidate_dice=0.5)
    assert evaluate_all([], QaConfig()) == []


def test_evaluate_all_looks_up_the_baseline_per_key() -> None:
    seen: list[RoiKey] = []

    def baseline_for(key: RoiKey) -> RoiBaseline | None:
        seen.append(key)
        return None

    evaluate_all(simulated_clinic(n=3), QaConfig(), baseline_for)
    assert seen == [RoiKey("pelvis", "1.0", "Bladder"), RoiKey("pelvis", "1.0", "Prostate")]
