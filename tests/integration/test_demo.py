"""``aircon demo`` end to end, as a user runs it: the real study (ProstateX-0000 through the TAPS
model) and the synthetic phantom study (demonstration models, scored against its truth)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PROSTATEX, REPO

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # TAPS on ProstateX; 4 series, 2 models

DEMO_TIMEOUT_S = 900


def _demo(tmp_path: Path, *args: str) -> tuple[dict[str, Any], subprocess.CompletedProcess[str]]:
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway",
            "-c",
            str(REPO / "config.yaml"),  # the embedded config, as shipped
            "demo",
            *args,
            "--json",
            "--out",
            str(tmp_path / "demo"),
        ],
        capture_output=True,
        text=True,
        timeout=DEMO_TIMEOUT_S,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 1, r.stdout[-2000:]  # one JSON object on stdout, nothing else
    summary = json.loads(lines[0])
    for key in ("ok", "rtstruct", "rtstruct_uid", "rois", "timings_s", "png", "work_dir"):
        assert key in summary
    for key in ("models", "source"):
        assert key in summary
    return summary, r


@pytest.mark.timeout(DEMO_TIMEOUT_S + 120)
def test_demo_real_study(tmp_path: Path) -> None:
    """Default demo: ProstateX-0000 (all series when ../shared/data has them, else the bundled
    T2), the prostate-mr rule picks the axial T2, TAPS contours the prostate."""
    summary, _ = _demo(tmp_path)
    assert summary["ok"] is True
    assert Path(summary["rtstruct"]).is_file()
    if PROSTATEX.is_dir():
        assert summary["source"]["kind"] == "prostatex"
        assert summary["source"]["instances"] == 164
    else:
        assert summary["source"]["kind"] == "prostatex-t2"
        assert summary["source"]["instances"] == 19
    assert summary["source"]["reference_series"] == "t2_tse_tra"

    (roi,) = summary["rois"]
    assert roi["name"] == "Prostate"
    assert roi["model"] == "taps" and roi["model_version"] == "1.1.2"
    assert 25.0 <= roi["volume_cc"] <= 60.0  # no expert truth for this study: plausibility
    taps = summary["models"]["taps"]
    assert taps["state"] == "done" and taps["inputs"] == ["t2_tse_tra"]
    assert taps["segment_s"] > 0
    assert {"segment", "rtstruct", "send", "segment:taps"} <= set(summary["timings_s"])
    assert Path(summary["png"]).stat().st_size > 10_000


@pytest.mark.timeout(DEMO_TIMEOUT_S + 120)
def test_demo_phantom(tmp_path: Path) -> None:
    """--phantom: the four-series phantom study, rule phantom-demo, Dice >= 0.9 per ROI."""
    summary, r = _demo(tmp_path, "--phantom")
    assert summary["ok"] is True
    assert summary["source"]["kind"] == "phantom" and summary["source"]["series"] == 4
    assert summary["source"]["reference_series"] == "t2"
    scored = [roi for roi in summary["rois"] if roi["dice"] is not None]
    assert {roi["name"] for roi in scored} == {"Prostate", "Bladder", "Rectum"}
    for roi in scored:
        assert roi["dice"] >= 0.9, roi
        assert roi["volume_cc"] > 0 and roi["model"], roi
    assert any(m["state"] == "done" for m in summary["models"].values())
    assert {"segment", "rtstruct", "send"} <= set(summary["timings_s"])
    assert Path(summary["png"]).stat().st_size > 10_000
    # The phantom's patient name and ID (gateway.demo.phantom.write_study) are never printed.
    for secret in ("PHANTOM^PELVIS", "PHANTOM-0001"):
        assert secret not in r.stdout and secret not in r.stderr
