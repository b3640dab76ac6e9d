"""The gateway end to end with real peers: dcmtk in, a real Orthanc as the planning system."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from pydicom import dcmread
from pydicom.dataset import Dataset

from gateway.contour.reader import dice, rasterize_rtstruct
from gateway.demo.launcher import free_port
from gateway.demo.node import ReceivingNode
from gateway.imaging import read_series, volume_cc
from gateway.segment.registry import load_model
from tests.conftest import PROSTATEX_T2, REPO, dcmtk_env, rule, wait_for

pytestmark = pytest.mark.integration

MODEL = REPO / "models" / "pelvis-demo"


def _ds_values(ds: Dataset) -> list[str]:
    """Every DS value in the dataset, recursively, as the strings that are written."""
    out: list[str] = []
    for elem in ds.iterall():
        if elem.VR == "DS" and elem.value is not None:
            values = elem.value if elem.VM > 1 else [elem.value]
            for v in values:
                s = getattr(v, "original_string", None) or str(v)
                out.append(s)
    return out


def _dciodvfy_errors(path: Path) -> list[str]:
    r = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
    return [line for line in (r.stdout + r.stderr).splitlines() if line.startswith("Error")]


def test_echo_success_and_unknown_calling_ae_rejected(make_gateway) -> None:
    gw = make_gateway(destination_port=free_port())
    gw.start()
    ok = subprocess.run(
        ["echoscu", "-aet", "STORESCU", "-aec", "AIRCON", "127.0.0.1", str(gw.port)],
        capture_output=True,
        text=True,
        env=dcmtk_env(),
    )
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run(
        ["echoscu", "-aet", "INTRUDER", "-aec", "AIRCON", "127.0.0.1", str(gw.port)],
        capture_output=True,
        text=True,
        env=dcmtk_env(),
    )
    assert bad.returncode != 0
    assert "Rejected" in bad.stderr or "rejected" in bad.stderr.lower()
    assert "Calling AE Title Not Recognized" in bad.stderr or "Calling AE" in bad.stderr


@pytest.mark.slow  # TAPS on the whole study: 35-110 s
def test_prostatex_study_to_orthanc(make_gateway, orthanc, prostatex, tmp_path) -> None:
    """The whole real study in with storescu; the rule picks the T2 axial, the real TAPS model
    runs, and one RTSTRUCT with a plausible prostate on the T2 arrives in Orthanc. (There is no
    expert truth for this study: volume and position are plausibility checks.)"""
    gw = make_gateway(destination_port=orthanc.dicom_port, rules=[rule("prostate-mr", ["taps"])])
    gw.start()
    r = gw.storescu(prostatex)
    assert r.returncode == 0, r.stderr[-2000:]
    jobs = gw.wait_jobs(1)
    assert jobs[0]["state"] == "done", jobs[0]
    assert len(list((gw.work / "spool").rglob("*.dcm"))) == 164
    assert sum(s["instances"] for s in gw.store().list_studies()) == 164

    rt_ids = wait_for(lambda: orthanc.instances_of_modality("RTSTRUCT"), 30, what="RTSTRUCT")
    assert len(rt_ids) == 1
    path = orthanc.download(rt_ids[0], tmp_path / "rt.dcm")
    rt = dcmread(path)
    t2 = [dcmread(f, stop_before_pixels=True) for f in sorted(PROSTATEX_T2.glob("*.dcm"))]
    t2_uids = {str(d.SOPInstanceUID) for d in t2}
    assert len(t2_uids) == 19

    refd = {
        str(ci.ReferencedSOPInstanceUID)
        for fr in rt.ReferencedFrameOfReferenceSequence
        for st in fr.RTReferencedStudySequence
        for se in st.RTReferencedSeriesSequence
        for ci in se.ContourImageSequence
    }
    assert refd == t2_uids
    assert rt.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID == t2[0].FrameOfReferenceUID
    assert rt.FrameOfReferenceUID == t2[0].FrameOfReferenceUID

    # One ROI, the clinic's name and colour (config roi_names: TAPS calls it "prostate").
    (roi,) = rt.StructureSetROISequence
    assert roi.ROIName == "Prostate"
    assert [int(x) for x in rt.ROIContourSequence[0].ROIDisplayColor] == [255, 0, 0]
    assert roi.ROIGenerationDescription == "taps 1.1.2"
    assert "taps" in rt.StructureSetDescription and "SHA-256" in rt.StructureSetDescription

    # Plausible: 25-60 cc, centred within 25 mm of the T2 volume's centre in the axial plane.
    volume = read_series(sorted(PROSTATEX_T2.glob("*.dcm")))
    mask = rasterize_rtstruct(rt, volume)["Prostate"]
    assert 25.0 <= volume_cc(mask, volume.image.GetSpacing()) <= 60.0
    img = volume.image
    points = np.array(
        [
            img.TransformIndexToPhysicalPoint((int(x), int(y), int(z)))
            for z, y, x in np.argwhere(mask)[::50]
        ]
    )
    centre = img.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in img.GetSize()])
    assert np.linalg.norm(points.mean(axis=0)[:2] - np.array(centre)[:2]) <= 25.0
    assert jobs[0]["state"] == "done" and jobs[0]["models"] == ["taps"]

    # Every contour point lies inside the image volume (half a pixel of tolerance).
    ref = sitk.ReadImage([str(p) for p in sorted(PROSTATEX_T2.glob("*.dcm"))])
    reader = sitk.ImageSeriesReader()
    files = reader.GetGDCMSeriesFileNames(str(PROSTATEX_T2))
    ref = sitk.ReadImage(files)
    size = np.array(ref.GetSize())
    for roi in rt.ROIContourSequence:
        for c in getattr(roi, "ContourSequence", []):
            pts = np.asarray(c.ContourData, dtype=float).reshape(-1, 3)
            for p in pts[:: max(1, len(pts) // 20)]:
                idx = np.array(ref.TransformPhysicalPointToContinuousIndex(tuple(p)))
                assert np.all(idx >= -0.51) and np.all(idx <= size - 1 + 0.51), (p, idx)

    assert all(len(v) <= 16 for v in _ds_values(rt))
    assert rt.ApprovalStatus == "UNAPPROVED"
    assert _dciodvfy_errors(path) == []


def test_phantom_dice_and_resend_keeps_one_uid(make_gateway, orthanc, tmp_path) -> None:
    """A phantom with known truth: Dice >= 0.90 per ROI; sent twice, still one RTSTRUCT UID."""
    from gateway.demo.phantom import make_phantom, write_dicom_series

    phantom = make_phantom(4242)
    series = write_dicom_series(phantom, tmp_path / "study", seed=4242)
    gw = make_gateway(destination_port=orthanc.dicom_port)
    gw.start()
    assert gw.storescu(tmp_path / "study").returncode == 0
    first = gw.wait_jobs(1)
    assert first[0]["state"] == "done", first[0]
    rt_ids = wait_for(lambda: orthanc.instances_of_modality("RTSTRUCT"), 30, what="RTSTRUCT")
    rt = dcmread(orthanc.download(rt_ids[0], tmp_path / "rt.dcm"))
    masks = rasterize_rtstruct(rt, [dcmread(f, stop_before_pixels=True) for f in series.files])
    truth = sitk.GetArrayFromImage(phantom.labels)
    spec = load_model(MODEL)
    for label, roi in spec.labels.items():
        assert dice(masks[roi.name], truth == label) >= 0.90, roi.name

    assert gw.storescu(tmp_path / "study").returncode == 0
    jobs = gw.wait_jobs(2)
    assert [j["state"] for j in jobs] == ["done", "done"]
    assert jobs[0]["rtstruct_uid"] == jobs[1]["rtstruct_uid"]
    assert len(orthanc.instances_of_modality("RTSTRUCT")) == 1


def test_destination_down_at_first_receives_after_retry(make_gateway, tmp_path) -> None:
    from gateway.demo.phantom import make_phantom, write_dicom_series

    dest_port = free_port()
    series = write_dicom_series(make_phantom(77), tmp_path / "study", seed=77)
    gw = make_gateway(
        destination_port=dest_port,
        delivery={"max_attempts": 10, "backoff_base_s": 1, "backoff_max_s": 4},
    )
    gw.start()
    assert gw.storescu(tmp_path / "study").returncode == 0
    wait_for(
        lambda: any(d["attempts"] >= 2 for j in gw.jobs() for d in j["deliveries"]),
        180,
        what="two failed delivery attempts",
    )
    node = ReceivingNode(tmp_path / "planning", ae_title="ORTHANC", port=dest_port)
    node.start()
    try:
        jobs = gw.wait_jobs(1)
        assert jobs[0]["state"] == "done", jobs[0]
        assert jobs[0]["deliveries"][0]["attempts"] >= 3
        files = node.files()
        assert len(files) == 1
        assert dcmread(files[0]).Modality == "RTSTRUCT"
        assert (
            str(dcmread(files[0]).ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID)
            == series.frame_of_reference_uid
        )
    finally:
        node.stop()


def test_study_survives_a_killed_gateway(make_gateway, tmp_path) -> None:
    """Instances acknowledged before a SIGKILL are processed after the restart, exactly once."""
    from gateway.demo.phantom import make_phantom, write_dicom_series

    write_dicom_series(make_phantom(31), tmp_path / "study", seed=31)
    node = ReceivingNode(tmp_path / "planning", ae_title="ORTHANC", port=free_port())
    node.start()
    try:
        # The kill may come before the gateway saw the association's release: the study then
        # counts as cut off and waits interrupted_wait_s for its sender, kept short here.
        gw = make_gateway(
            destination_port=node.port,
            assembly={"series_quiet_s": 5, "study_timeout_s": 300, "interrupted_wait_s": 5},
        )
        gw.start()
        assert gw.storescu(tmp_path / "study").returncode == 0
        assert gw.proc is not None
        gw.proc.kill()  # before the series has been quiet long enough: no job yet
        gw.proc.wait()
        assert gw.jobs() == []
        gw.start()
        jobs = gw.wait_jobs(1)
        assert [j["state"] for j in jobs] == ["done"]
        assert len(node.files()) == 1
        # The contour preview made when the job built its structure set, next to it.
        preview = Path(jobs[0]["preview_path"])
        assert preview.parent == gw.cfg.paths.output / jobs[0]["study_uid"]
        assert preview.read_bytes().startswith(b"\x89PNG")
    finally:
        node.stop()


def _aircon(cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "-c", str(cfg), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_parked_delivery_is_resent_with_the_cli(make_gateway, tmp_path) -> None:
    """After max_attempts the delivery is parked; `aircon resend JOB` delivers it once the
    destination is back, through the running gateway's queue."""
    from gateway.demo.phantom import make_phantom, write_dicom_series

    dest_port = free_port()
    write_dicom_series(make_phantom(55), tmp_path / "study", seed=55)
    gw = make_gateway(
        destination_port=dest_port,
        delivery={"max_attempts": 2, "backoff_base_s": 0.5, "backoff_max_s": 1},
    )
    gw.start()
    send = _aircon(
        gw.config_path, "send", "-q", str(tmp_path / "study"), f"AIRCON@127.0.0.1:{gw.port}"
    )
    assert send.returncode == 0, send.stderr
    assert "sent 24 instance(s)" in send.stdout
    (job,) = gw.wait_jobs(1)
    assert job["state"] == "failed"
    assert job["deliveries"][0]["state"] == "failed"
    assert "parked after 2 attempts" in job["reason"]
    listing = _aircon(gw.config_path, "jobs")
    assert "failed" in listing.stdout and "parked after 2 attempts" in listing.stdout

    node = ReceivingNode(tmp_path / "planning", ae_title="ORTHANC", port=dest_port)
    node.start()
    try:
        echo = _aircon(gw.config_path, "echo", "planning")
        assert echo.returncode == 0 and "success" in echo.stdout
        resend = _aircon(gw.config_path, "resend", str(job["job"]))
        assert resend.returncode == 0, resend.stderr
        wait_for(lambda: gw.jobs()[0]["state"] == "done", 60, what="the resent job to finish")
        assert len(node.files()) == 1
        assert gw.jobs()[0]["deliveries"][0]["state"] == "delivered"
    finally:
        node.stop()
