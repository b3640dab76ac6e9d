"""DICOM SEG conformance: dciodvfy (dicom3tools) reports no error for a binary and a fractional
SEG on a classic series, on a Legacy Converted Enhanced MR instance, and on the Dixon water
frames of an instance that holds other channels too. Warnings are printed, not failed."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from gateway.contour.rtstruct import write_dataset
from gateway.contour.seg import build_seg
from tests.seg_sources import Source, make_sources


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Source]:
    return make_sources(tmp_path_factory.mktemp("seg_sources"))


@pytest.mark.parametrize("fractional", [False, True], ids=["binary", "fractional"])
@pytest.mark.parametrize("kind", ["classic", "multiframe", "dixon"])
def test_dciodvfy_reports_no_errors(
    sources: dict[str, Source], kind: str, fractional: bool, tmp_path: Path
) -> None:
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy (dicom3tools) not installed")
    source = sources[kind]
    ds = build_seg(
        source.volume,
        source.structures(),
        uid_root="1.2.826.0.1.3680043.8.498.",
        manufacturer="AIRCON",
        series_description="AI SEG - REVIEW REQUIRED",
        input_series_uids=[source.volume.series_instance_uid],
        fractional=fractional,
    )
    path = tmp_path / "seg.dcm"
    write_dataset(ds, path)
    result = subprocess.run(
        ["dciodvfy", str(path)], capture_output=True, text=True, timeout=120, check=False
    )
    output = result.stdout + result.stderr
    assert "Segmentation" in output, output
    warnings = [line for line in output.splitlines() if line.startswith("Warning")]
    print(
        f"dciodvfy {kind} {'fractional' if fractional else 'binary'}: {warnings or 'no warnings'}"
    )
    errors = [line for line in output.splitlines() if line.startswith("Error")]
    assert errors == [], output
