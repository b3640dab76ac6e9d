"""``aircon validate`` end to end: labelled case folders in, the model run through the gateway's
code path, an HTML report a real browser renders and a CSV out.

Screenshots go to ``test-artifacts/validate/`` (ignored by git); the test prints the path.
"""

from __future__ import annotations

import csv
import re
import shutil
import subprocess
from html import unescape
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from PIL import Image

from gateway import imaging
from gateway.config import GatewayConfig, RoiSpec, RtstructConfig, parse_config
from gateway.contour import rtstruct
from gateway.demo.phantom import LABEL_NAMES, make_study, write_study
from gateway.job import Provenance
from gateway.qa.report import Verdict
from gateway.qa.validation import main, validate

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts" / "validate"
PATIENT_NAME, PATIENT_ID = "DOE^JOHNATHAN", "PID-93817"


def _config(tmp_path: Path) -> GatewayConfig:
    return parse_config({"paths": {"models": str(REPO / "models")}}, tmp_path)


def _screenshot(page: Path, name: str) -> Path:
    """Render ``page`` in headless Chromium; return the PNG, checked to be not blank."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("chromium is not installed (scripts/install.sh --dev installs it)")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    png = ARTIFACTS / f"{name}.png"
    png.unlink(missing_ok=True)
    subprocess.run(
        [exe, "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={png}"]
        + ["--window-size=1280,2000", page.resolve().as_uri()],
        capture_output=True,
        timeout=120,
        check=True,
    )
    print(f"report screenshot: {png}")
    pixels = np.asarray(Image.open(png).convert("L"))
    assert pixels.shape == (2000, 1280)
    assert pixels.std() > 20 and (pixels < 100).mean() > 0.01, "the screenshot looks blank"
    return png


def _truth_rtstruct(case: Path, t2_files: list[Path], labels: sitk.Image) -> None:
    """The phantom's truth as an RTSTRUCT with the clinic's names spelt otherwise."""
    volume = imaging.read_series(t2_files)
    names = {1: "PROSTATE", 2: "Bladder_", 3: "rectum"}
    ds = rtstruct.build_rtstruct(
        volume,
        sitk.GetArrayFromImage(labels),
        {k: RoiSpec(name=n, color=(0, 255, 0)) for k, n in names.items()},
        Provenance("truth", "1"),
        RtstructConfig(),
        input_series_uids=[volume.series_instance_uid],
    )
    (case / "truth").mkdir()
    rtstruct.write_dataset(ds, case / "truth" / "expert.dcm")


def _phantom_case(root: Path, i: int) -> str:
    """One phantom study in a case folder; truth as multi-label NIfTI, one NIfTI per ROI or an
    RTSTRUCT by turns. Returns the folder name."""
    seed = 6100 + i
    # One folder named after the patient: the report must not show that name.
    name = f"{PATIENT_ID}-scan" if i == 0 else f"phantom-{i:02d}"
    case = root / name
    study = make_study(seed)
    written = write_study(
        study, case / "study", seed=seed, patient_name=PATIENT_NAME, patient_id=PATIENT_ID
    )
    (case / "README.txt").write_text("not DICOM: ignored\n")
    labels = study.t2.labels
    if i % 3 == 0:
        (case / "truth").mkdir()
        sitk.WriteImage(labels, str(case / "truth" / "labels.nii.gz"))
        (case / "truth" / "labels.json").write_text(
            '{"1": "Prostate", "2": "bladder", "3": "Rectum"}'
        )
    elif i % 3 == 1:
        (case / "truth").mkdir()
        for value, roi in LABEL_NAMES.items():
            mask = sitk.Cast(labels == value, sitk.sitkUInt8)
            sitk.WriteImage(mask, str(case / "truth" / f"{roi.upper()}.nii.gz"))
    else:
        _truth_rtstruct(case, list(written["t2"].files), labels)
    return name


def test_validate_ten_phantoms_passes_and_renders(tmp_path: Path) -> None:
    """``aircon validate`` as a user runs it: exit 0, the report, the CSVs, a baseline."""
    import sys
    import time

    import yaml

    from gateway.qa.report import ReportFiles
    from gateway.segment.spec import ModelQa

    cases, out = tmp_path / "cases", tmp_path / "report"
    names = [_phantom_case(cases, i) for i in range(10)]
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"paths": {"models": str(REPO / "models")}}))
    t0 = time.monotonic()
    run = subprocess.run(
        [sys.executable, "-m", "gateway", "-c", str(config), "validate"]
        + ["--model", "pelvis-dixon-demo", "--cases", str(cases), "--out", str(out)]
        + ["--keep-rtstruct"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    print(f"aircon validate: 10 cases in {time.monotonic() - t0:.1f} s\n{run.stdout}")
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.startswith("PASS")
    files = ReportFiles(
        out / "validation.html", out / "validation.csv", out / "validation-summary.csv"
    )
    with files.summary_csv.open(newline="") as f:
        verdicts = {r["roi"]: r["verdict"] for r in csv.DictReader(f)}
    assert verdicts == {"Prostate": "pass", "Bladder": "pass", "Rectum": "pass"}
    # The control-chart baseline it suggests is a valid model.yaml qa: block.
    suggested = yaml.safe_load((out / "baseline.yaml").read_text())
    baseline = ModelQa.model_validate(suggested["qa"]).baseline
    assert set(baseline) == {"Prostate", "Bladder", "Rectum"}
    assert all(0.5 < b.surface_dice[0] <= 1.0 for b in baseline.values() if b.surface_dice)

    with files.csv.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 30 and len({(r["case"], r["roi"]) for r in rows}) == 30
    for r in rows:
        assert r["status"] == "compared" and float(r["dice"]) >= 0.9, r
        assert r["passed"] == "yes"
    # The truth's own spellings were paired with the clinic names.
    assert {r["reference_roi"] for r in rows if r["roi"] == "Bladder"} == {
        "bladder",
        "BLADDER",
        "Bladder_",
    }
    labels = {r["case"] for r in rows}
    assert labels == {"case-001", *names[1:]}

    page = files.html.read_text()
    for section in ("Provenance", "Bland-Altman", "Worst cases", "Data set fingerprint"):
        assert section in page
    for field in ("Weights SHA-256", "Data set fingerprint (SHA-256)"):
        assert re.search(rf"<th>{re.escape(field)}</th><td>[0-9a-f]{{64}}</td>", page), field
    assert page.count("data:image/png;base64,") == 2 + 5  # plots, Bland-Altman, 5 overlays
    assert "http://" not in page and "https://" not in page and 'src="file:' not in page
    everything = page + files.csv.read_text() + files.summary_csv.read_text() + run.stdout
    for word in (PATIENT_ID, "DOE", "JOHNATHAN"):
        assert word not in everything
    written = sorted((out / "rtstruct").glob("*.dcm"))
    assert len(written) == 10
    assert pydicom.dcmread(written[0]).ApprovalStatus == "UNAPPROVED"
    _screenshot(files.html, "phantoms")


def test_validate_refuses_a_case_and_an_unknown_model(tmp_path: Path) -> None:
    """A case the model must refuse (no Dixon series) and one whose truth is on another grid
    are reported per case and fail the run; an unknown model is an error (exit code 2)."""
    cases = tmp_path / "cases"
    study = make_study(6200)
    write_study(study, cases / "t2-only" / "dicom", seed=6200, series=("t2",))
    (cases / "t2-only" / "truth").mkdir()
    sitk.WriteImage(study.t2.labels, str(cases / "t2-only" / "truth" / "Prostate.nii.gz"))
    study = make_study(6201)
    write_study(study, cases / "shifted" / "dicom", seed=6201)
    shifted = sitk.Image(study.t2.labels)
    shifted.SetOrigin(tuple(np.add(shifted.GetOrigin(), (0.0, 0.0, 3.0))))
    (cases / "shifted" / "truth").mkdir()
    sitk.WriteImage(shifted, str(cases / "shifted" / "truth" / "Prostate.nii.gz"))
    cfg = _config(tmp_path)

    result = validate(cfg, "pelvis-dixon-demo", cases, tmp_path / "out")
    errors = {c.label: c.error for c in result.cases}
    assert "'DixonWater': no matching series received" in errors["t2-only"]
    assert errors["shifted"].startswith("truth Prostate.nii.gz is not on the reference series")
    assert "origin" in errors["shifted"]
    assert result.verdict is Verdict.FAIL
    assert errors["t2-only"] in unescape(result.files.html.read_text())
    with result.files.csv.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert {(r["case"], r["roi"], r["status"]) for r in rows} == {
        (case, roi, "not run") for case in errors for roi in ("Prostate", "Bladder", "Rectum")
    }
    assert main(cfg, "pelvis-dixon-demo", cases, tmp_path / "out2") == 1
    assert main(cfg, "no-such-model", cases, tmp_path / "out3") == 2


@pytest.mark.slow  # ~35 s on 2 cores: TAPS on CPU
def test_validate_prostatex_t2_with_taps_renders(tmp_path: Path, prostatex: Path) -> None:
    """The real ProstateX-0000 study (all its series) with a hand-made ellipsoid truth on the
    T2 grid: poor Dice is expected; the report renders and says no thresholds are set."""
    pytest.importorskip("taps")
    case = tmp_path / "cases" / prostatex.name  # named after the patient, as TCIA does
    shutil.copytree(prostatex, case / "dicom")
    t2 = imaging.read_series(sorted((case / "dicom").rglob("*t2tsetra*/*.dcm")))
    size, spacing = np.array(t2.image.GetSize()), np.array(t2.image.GetSpacing())
    xyz = np.stack(np.meshgrid(*(np.arange(n) for n in size), indexing="ij"), axis=-1)
    centre = (size - 1) / 2 + np.array([0, 0.05 * size[1], 0])
    radii = np.array([22.0, 17.0, 15.0])  # mm, a prostate-sized ellipsoid
    inside = ((((xyz - centre) * spacing) / radii) ** 2).sum(axis=-1) <= 1.0
    truth = sitk.GetImageFromArray(inside.transpose(2, 1, 0).astype(np.uint8))
    truth.CopyInformation(t2.image)
    (case / "truth").mkdir()
    sitk.WriteImage(truth, str(case / "truth" / "Prostate.nii.gz"))

    result = validate(_config(tmp_path), "taps", tmp_path / "cases", tmp_path / "out")
    print(f"validate ProstateX with TAPS: {result.seconds:.1f} s")
    assert [c.error for c in result.cases] == [""]
    [row] = result.report.rows
    assert row.case == "case-001" and row.roi == "Prostate" and row.status == "compared"
    assert result.verdict is Verdict.NO_THRESHOLDS
    page = result.files.html.read_text()
    assert "no thresholds set" in page.lower()
    assert prostatex.name not in page and prostatex.name not in result.files.csv.read_text()
    _screenshot(result.files.html, "prostatex-taps")
