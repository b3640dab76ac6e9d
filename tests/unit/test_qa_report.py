"""QA reports: ROI name pairing, acceptance verdicts, the monitoring report from QaRecords, and
the truth files of a validation case."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from gateway.config import RoiSpec
from gateway.db.records import QaRecord, QaStatus
from gateway.qa.cases import CaseFiles, TruthError, fingerprint, read_truth
from gateway.qa.pairing import match_rois
from gateway.qa.report import RoiRow, Verdict, judge_row, monitoring_report, overall, summarise
from gateway.segment.spec import ModelQa

DAY = 86400.0


def test_roi_names_pair_by_clinic_name_synonym_and_spelling() -> None:
    roi_names = {"prostate": RoiSpec(name="CTV_Prostate", color=(255, 0, 0))}
    pairs = match_rois(
        ["CTV_Prostate", "Bladder", "SeminalVes", "Rectum", "Femur_L"],
        ["prostate", "bladder ", "Seminal Vesicles", "Bladder", "Bowel"],
        roi_names,
    ).pairs
    assert pairs == {
        "CTV_Prostate": "prostate",  # through the clinic's name map
        "Bladder": "Bladder",  # the exact name wins over "bladder "
        "SeminalVes": "Seminal Vesicles",  # TG-263 synonym
    }
    # A name is used once: the second AI name that normalises to it stays unpaired.
    assert match_rois(["Rectum", "RECTUM"], ["rectum"], {}).pairs == {"Rectum": "rectum"}


def _row(roi: str, dice: float | None, **kw: object) -> RoiRow:
    return RoiRow(
        case=f"c{dice}",
        study_uid="1.2.3",
        model="m",
        model_version="1",
        roi=roi,
        reference_roi=roi,
        status=str(kw.pop("status", "compared")),
        dice=dice,
        **kw,  # type: ignore[arg-type]
    )


def test_an_roi_passes_on_the_median_and_without_thresholds_never_passes() -> None:
    qa = ModelQa.model_validate(
        {"acceptance": {"Prostate": {"dice_min": 0.85}, "Rectum": {"hd95_max_mm": 5}}}
    )
    rows = [_row("Prostate", d) for d in (0.95, 0.80, 0.90)]
    rows += [_row("Rectum", 0.9, hd95=None), _row("Bladder", 0.99)]
    by_roi = {s.roi: s for s in summarise(rows, {"m": qa})}
    assert by_roi["Prostate"].verdict is Verdict.PASS
    assert by_roi["Prostate"].stats["dice"] == pytest.approx((0.85, 0.90, 0.925))
    assert [judge_row(r, qa) for r in rows[:3]] == [True, False, True]
    assert by_roi["Rectum"].verdict is Verdict.FAIL  # a threshold on a metric with no value
    assert by_roi["Rectum"].reasons == ("median hd95 none > 5",)
    assert by_roi["Bladder"].verdict is Verdict.NO_THRESHOLDS
    assert judge_row(rows[-1], qa) is None
    assert overall([by_roi["Prostate"]]) is Verdict.PASS
    assert overall([by_roi["Prostate"]], failed_cases=1) is Verdict.FAIL
    assert overall([by_roi["Prostate"], by_roi["Bladder"]]) is Verdict.NO_THRESHOLDS


def _record(job: int, at: float, roi: str, status: QaStatus, dice: float | None) -> QaRecord:
    return QaRecord(
        job_id=job,
        study_uid=f"1.2.826.0.1.{job}",
        model="pelvis",
        model_version="2.0",
        roi="" if status is QaStatus.ADDED else roi,
        approved_roi="" if status is QaStatus.DELETED else roi,
        status=status,
        ai_uid=f"1.2.3.{job}",
        approved_uid=f"1.2.4.{job}",
        at=at,
        dice=dice,
        hd95=None if dice is None else 2.0,
        surface_dice=dice,
        apl=None if dice is None else 10.0,
        volume_ai=None if dice is None else 40.0,
        volume_approved=None if dice is None else 42.0,
        unchanged=dice == 1.0,
    )


def test_monitoring_report_of_a_period(tmp_path: Path) -> None:
    t0 = 1_700_000_000.0
    records = [
        _record(1, t0 - 5 * DAY, "Prostate", QaStatus.COMPARED, 0.5),  # before the period
        _record(2, t0 + 1 * DAY, "Prostate", QaStatus.COMPARED, 0.9),
        _record(3, t0 + 2 * DAY, "Prostate", QaStatus.COMPARED, 1.0),
        _record(3, t0 + 2 * DAY, "Rectum", QaStatus.DELETED, None),
        _record(4, t0 + 3 * DAY, "Rectum", QaStatus.COMPARED, 0.8),
        _record(4, t0 + 3 * DAY, "Bowel", QaStatus.ADDED, None),
    ]
    qa = {"pelvis": ModelQa.model_validate({"acceptance": {"*": {"dice_min": 0.85}}})}
    files = monitoring_report(
        records, t0, t0 + 30 * DAY, tmp_path, acceptance=qa, software_version="9.9"
    )
    with files.csv.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["case"], r["roi"], r["status"]) for r in rows] == [
        ("job 2", "Prostate", "compared"),
        ("job 3", "Prostate", "compared"),
        ("job 3", "Rectum", "deleted"),
        ("job 4", "Rectum", "compared"),
        ("job 4", "", "added"),
    ]
    assert [r["passed"] for r in rows] == ["yes", "yes", "", "no", ""]
    with files.summary_csv.open(newline="") as f:
        summary = {r["roi"]: r for r in csv.DictReader(f)}
    assert set(summary) == {"Prostate", "Rectum"}  # an added ROI is listed, not summarised
    assert summary["Prostate"]["verdict"] == "pass"
    assert summary["Prostate"]["unchanged_pct"] == "50"
    assert summary["Rectum"]["deleted_pct"] == "50" and summary["Rectum"]["verdict"] == "fail"
    page = files.html.read_text()
    assert "2023-11-14 to 2023-12-14" in page and "pelvis 2.0" in page and "9.9" in page
    assert page.count("data:image/png;base64,") == 2  # no overlays without images
    assert "Deleted" in page and "job 4" in page


def test_monitoring_report_of_an_empty_period(tmp_path: Path) -> None:
    files = monitoring_report([], 0.0, DAY, tmp_path)
    assert "no approved structure set was compared" in files.html.read_text()
    assert len(files.csv.read_text().splitlines()) == 1


def test_truth_files_are_checked_and_fingerprinted(tmp_path: Path) -> None:
    labels = tmp_path / "truth" / "labels.nii.gz"
    labels.parent.mkdir()
    labels.write_bytes(b"x")
    case = CaseFiles(tmp_path, truth_nifti=[labels])
    with pytest.raises(TruthError, match="labels.json"):
        read_truth(case, None)  # type: ignore[arg-type]
    with pytest.raises(TruthError, match="no truth"):
        read_truth(CaseFiles(tmp_path), None)  # type: ignore[arg-type]
    before = fingerprint(["1.2", "1.1"], [labels])
    assert before == fingerprint(["1.1", "1.2"], [labels])  # order of the UIDs does not count
    labels.write_bytes(b"y")
    assert fingerprint(["1.1", "1.2"], [labels]) != before


def test_monitoring_report_shows_the_control_charts_and_the_periods_alarms(
    tmp_path: Path,
) -> None:
    from gateway.qa.drift import evaluate_all
    from gateway.qa_policy import QaConfig
    from tests.unit.test_qa_drift import simulated_clinic

    records = simulated_clinic()
    drift = evaluate_all(records, QaConfig())
    [alarm] = [a for d in drift for a in d.alarms]
    files = monitoring_report(
        records,
        0.0,
        records[-1].at + 1,
        tmp_path,
        drift=drift,
        events=[(alarm.at, "drift alarm (open)", alarm.message)],
    )
    page = files.html.read_text()
    assert "Control charts" in page and "Alarms and incidents in the period" in page
    assert alarm.message in page
    assert "Prostate: out_of_control" in page and "Bladder: in_control" in page
    assert page.count("data:image/png;base64,") == 2 + len(drift)  # one chart image per ROI
