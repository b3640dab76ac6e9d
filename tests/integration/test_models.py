"""Several models, own and external, on multi-series studies, through the running gateway.

Real parts: `aircon serve` as a subprocess, dcmtk storescu in, a pynetdicom receiving node or a
real Orthanc out, real nnU-Net models, real subprocess/python external models, real TAPS.
"""

from __future__ import annotations

import random
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk
from pydicom import dcmread

from gateway.contour.reader import dice, rasterize_rtstruct
from gateway.demo.launcher import free_port
from gateway.demo.node import ReceivingNode
from gateway.demo.phantom import make_phantom, make_study, write_dicom_series, write_study
from gateway.imaging import read_series, volume_cc
from tests.conftest import PROSTATEX_T2, REPO, dcmtk_env, rule

pytestmark = pytest.mark.integration

FIXTURE_MODELS = REPO / "tests" / "fixtures" / "models"
DIXON = REPO / "models" / "pelvis-dixon-demo"


def _models_dir(tmp_path: Path, *names: str) -> Path:
    """A models folder holding links to the named repo models and all test fixture models."""
    folder = tmp_path / "models"
    folder.mkdir(exist_ok=True)
    for name in names:
        (folder / name).symlink_to(REPO / "models" / name)
    for fixture in FIXTURE_MODELS.iterdir():
        if (fixture / "model.yaml").is_file():
            (folder / fixture.name).symlink_to(fixture)
    (folder / "fake_model.py").symlink_to(FIXTURE_MODELS / "fake_model.py")
    return folder


def _storescu(port: int, files: list[Path], calling_ae: str = "STORESCU") -> None:
    r = subprocess.run(
        [
            "storescu",
            "-aet",
            calling_ae,
            "-aec",
            "AIRCON",
            "127.0.0.1",
            str(port),
            *map(str, files),
        ],
        capture_output=True,
        text=True,
        env=dcmtk_env(),
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]


def _rois(rt: Any) -> dict[str, str]:
    """ROI name -> ROIGenerationDescription (the model and version that made it)."""
    return {str(r.ROIName): str(r.ROIGenerationDescription) for r in rt.StructureSetROISequence}


@pytest.fixture
def node(tmp_path: Path):
    n = ReceivingNode(tmp_path / "planning", ae_title="ORTHANC", port=free_port())
    n.start()
    yield n
    n.stop()


def _job_for(gw: Any, study_uid: str) -> dict[str, Any]:
    return next(j for j in gw.jobs() if j["study_uid"] == study_uid)


def _rt_for(node: ReceivingNode, study_uid: str) -> Any:
    found = [dcmread(f) for f in node.files()]
    matching = [d for d in found if str(d.StudyInstanceUID) == study_uid]
    assert len(matching) == 1, f"{len(matching)} RTSTRUCTs for the study"
    return matching[0]


@pytest.mark.slow  # ~50 s: two studies, two nnU-Net models
@pytest.mark.skipif(not (DIXON / "model.yaml").is_file(), reason="pelvis-dixon-demo not trained")
def test_four_series_study_and_a_study_without_dixon(make_gateway, node, tmp_path) -> None:
    """Four series in random order over two associations -> the two-channel model runs on T2 +
    resampled Dixon water (Dice >= 0.90 on the T2 grid). A T2-only study under the same rule:
    the two-channel model fails at the study timeout naming the missing channel, and the
    one-channel model still delivers."""
    gw = make_gateway(
        destination_port=node.port,
        assembly={"series_quiet_s": 3, "study_timeout_s": 40},
        rules=[
            rule(
                "pelvis",
                ["pelvis-dixon-demo", "pelvis-demo"],
                prefer={n: "pelvis-dixon-demo" for n in ("Prostate", "Bladder", "Rectum")},
            )
        ],
    )
    gw.start()
    full = make_study(7007)
    written = write_study(full, tmp_path / "full", seed=7007)
    files = [f for s in written.values() for f in s.files]
    random.Random(1).shuffle(files)
    _storescu(gw.port, files[: len(files) // 2])
    _storescu(gw.port, files[len(files) // 2 :])
    t2_only = make_study(7008)
    lone = write_study(t2_only, tmp_path / "lone", seed=7008, series=("t2",))
    _storescu(gw.port, list(lone["t2"].files))

    jobs = gw.wait_jobs(2, timeout=300)
    job = _job_for(gw, written["t2"].study_uid)
    assert job["state"] == "done" and job["reason"] == "", job
    rt = _rt_for(node, written["t2"].study_uid)
    assert set(_rois(rt).values()) == {"pelvis-dixon-demo 1.0.0"}
    refd = {
        str(se.SeriesInstanceUID)
        for fr in rt.ReferencedFrameOfReferenceSequence
        for st in fr.RTReferencedStudySequence
        for se in st.RTReferencedSeriesSequence
    }
    assert refd == {written["t2"].series_uid}  # on the T2 grid, not the Dixon one
    masks = rasterize_rtstruct(
        rt, [dcmread(f, stop_before_pixels=True) for f in written["t2"].files]
    )
    truth = sitk.GetArrayFromImage(full.t2.labels)
    for label, name in ((1, "Prostate"), (2, "Bladder"), (3, "Rectum")):
        assert dice(masks[name], truth == label) >= 0.90, name

    lone_job = _job_for(gw, lone["t2"].study_uid)
    assert lone_job["state"] == "done", lone_job
    assert "pelvis-dixon-demo: not ready after 40 s" in lone_job["reason"]
    assert "'DixonWater': no matching series received" in lone_job["reason"]
    rt = _rt_for(node, lone["t2"].study_uid)
    assert set(_rois(rt).values()) == {"pelvis-demo 1.0.0"}
    assert len(jobs) == 2


def test_failing_external_models_fail_their_jobs_and_the_gateway_keeps_serving(
    make_gateway, node, tmp_path
) -> None:
    """A command model that exits 1, one that hangs past its timeout, one that writes the
    wrong shape, and a study outside a model's guardrails (8 mm slices): each job fails with
    its reason and nothing is sent; then a good study gets one merged structure set."""
    by_ae = {
        "EXIT1": "cmd-exit1",
        "HANG": "cmd-hang",
        "SHAPE": "cmd-wrong-shape",
        "THICK": "pelvis-demo",
    }
    rules = [
        {**rule(f"r-{ae.lower()}", [model]), "match": {"calling_ae": ae}}
        for ae, model in by_ae.items()
    ]
    rules.append(rule("good", ["cmd-threshold", "py-threshold"], prefer={"Bright": "py-threshold"}))
    gw = make_gateway(
        destination_port=node.port,
        paths={"models": str(_models_dir(tmp_path, "pelvis-demo"))},
        peers=[{"ae_title": ae} for ae in [*by_ae, "STORESCU", "ECHOSCU"]],
        rules=rules,
    )
    gw.start()
    studies = {}
    for i, ae in enumerate(by_ae):
        if ae == "THICK":
            phantom = make_phantom(600 + i, shape=(12, 96, 96), spacing=(8.0, 1.25, 1.25))
        else:
            phantom = make_phantom(600 + i)
        series = write_dicom_series(phantom, tmp_path / ae, seed=600 + i)
        studies[ae] = series.study_uid
        _storescu(gw.port, list(series.files), calling_ae=ae)
    gw.wait_jobs(4, timeout=300)
    reasons = {ae: _job_for(gw, uid) for ae, uid in studies.items()}
    assert all(j["state"] == "failed" and j["deliveries"] == [] for j in reasons.values())
    assert "command exited with status 1" in reasons["EXIT1"]["reason"]
    assert "CUDA out of memory (simulated)" in reasons["EXIT1"]["reason"]
    assert "command timed out after 3 s" in reasons["HANG"]["reason"]
    assert "returned shape (4, 4, 4), expected (24, 96, 96)" in reasons["SHAPE"]["reason"]
    assert "T2 slice thickness 8.0 mm outside 2-4.5 mm" in reasons["THICK"]["reason"]
    assert node.files() == []

    ok = subprocess.run(
        ["echoscu", "-aet", "ECHOSCU", "-aec", "AIRCON", "127.0.0.1", str(gw.port)],
        capture_output=True,
        env=dcmtk_env(),
    )
    assert ok.returncode == 0
    good = write_dicom_series(make_phantom(650), tmp_path / "good", seed=650)
    _storescu(gw.port, list(good.files))
    gw.wait_jobs(5, timeout=300)
    job = _job_for(gw, good.study_uid)
    assert job["state"] == "done", job
    rt = _rt_for(node, good.study_uid)
    assert _rois(rt) == {"Bright": "py-threshold 0.1"}  # config prefers the python model
    equipment = {str(e.ManufacturerModelName) for e in rt.ContributingEquipmentSequence}
    assert equipment == {"py-threshold"}


@pytest.mark.slow  # ~45 s: TAPS on the ProstateX T2
@pytest.mark.skipif(not PROSTATEX_T2.is_dir(), reason="ProstateX data not available")
def test_pelvis_demo_and_taps_merge_into_one_structure_set(
    make_gateway, node, prostatex, tmp_path
) -> None:
    """A rule with pelvis-demo + TAPS: one structure set; its Prostate comes from TAPS, as
    config names; every ROI names its model and version."""
    gw = make_gateway(
        destination_port=node.port,
        rules=[rule("prostate", ["pelvis-demo", "taps"], prefer={"Prostate": "taps"})],
    )
    gw.start()
    assert gw.storescu(prostatex).returncode == 0
    (job,) = gw.wait_jobs(1, timeout=600)
    assert job["state"] == "done", job
    (path,) = node.files()
    rt = dcmread(path)
    rois = _rois(rt)
    assert rois["Prostate"] == "taps 1.1.2"
    assert list(rois).count("Prostate") == 1
    others = {name: made for name, made in rois.items() if name != "Prostate"}
    assert others and set(others.values()) == {"pelvis-demo 1.0.0"}
    assert {str(e.ManufacturerModelName) for e in rt.ContributingEquipmentSequence} == {
        "pelvis-demo",
        "taps",
    }
    volume = read_series(sorted(PROSTATEX_T2.glob("*.dcm")))
    prostate = rasterize_rtstruct(rt, volume)["Prostate"]
    assert 25.0 <= volume_cc(prostate, volume.image.GetSpacing()) <= 60.0
    np.testing.assert_equal(prostate.shape, (19, 384, 384))
