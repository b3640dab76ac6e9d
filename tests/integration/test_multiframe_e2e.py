"""What scanners really send, end to end with dcmtk storescu -> AIRCON -> Orthanc: a multi-frame
(Legacy Converted Enhanced MR) ProstateX T2 gives the same TAPS prostate as the classic series,
and a DICOM SEG goes out beside the RTSTRUCT."""

from __future__ import annotations

import subprocess
from pathlib import Path
from types import SimpleNamespace

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from gateway.contour.reader import dice, rasterize_rtstruct
from gateway.imaging import Slices, read_headers
from tests.conftest import PROSTATEX_T2, rule, wait_for


def _dciodvfy_errors(path: Path) -> list[str]:
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
    return [x for x in (out.stdout + out.stderr).splitlines() if x.startswith("Error")]


def legacy_t2(out_dir: Path) -> Path:
    """The ProstateX T2 as one Legacy Converted Enhanced MR object, in a study of its own (same
    patient and frame of reference, new Study, Series and SOP Instance UIDs)."""
    sources = [pydicom.dcmread(p) for p in sorted(PROSTATEX_T2.glob("*.dcm"))]
    study_uid = generate_uid()
    for ds in sources:
        ds.StudyInstanceUID = study_uid
    converted = hd.legacy.LegacyConvertedEnhancedMRImage(
        sources,
        series_instance_uid=generate_uid(),
        series_number=104,
        sop_instance_uid=generate_uid(),
        instance_number=1,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "t2-legacy.dcm"
    converted.save_as(path)
    return path


def _roi_mask(rt_path: Path, reference: object, name: str) -> np.ndarray:
    return rasterize_rtstruct(pydicom.dcmread(rt_path), reference)[name]  # type: ignore[arg-type]


@pytest.mark.slow  # TAPS twice on the T2: 70-200 s
def test_multiframe_t2_gives_the_classic_contour(
    make_gateway, orthanc, prostatex, tmp_path
) -> None:
    gw = make_gateway(destination_port=orthanc.dicom_port, rules=[rule("prostate-mr", ["taps"])])
    gw.start()
    legacy = legacy_t2(tmp_path / "legacy")
    assert gw.storescu(PROSTATEX_T2).returncode == 0
    r = gw.storescu(legacy, required=True)
    assert r.returncode == 0, r.stderr[-2000:]
    jobs = gw.wait_jobs(2, timeout=400)
    assert [j["state"] for j in jobs] == ["done", "done"], jobs
    rt_ids = wait_for(
        lambda: (ids := orthanc.instances_of_modality("RTSTRUCT")) and len(ids) == 2 and ids,
        30,
        what="2 RTSTRUCTs",
    )
    paths = [orthanc.download(i, tmp_path / f"rt{n}.dcm") for n, i in enumerate(rt_ids)]
    by_sop_class = {}
    for p in paths:
        rt = pydicom.dcmread(p)
        image = rt.ROIContourSequence[0].ContourSequence[0].ContourImageSequence[0]
        by_sop_class[str(image.ReferencedSOPClassUID)] = (p, rt)
        assert _dciodvfy_errors(p) == []
    multi_path, multi = by_sop_class["1.2.840.10008.5.1.4.1.1.4.4"]
    classic_path, _ = by_sop_class["1.2.840.10008.5.1.4.1.1.4"]
    refs = [c.ContourImageSequence[0] for c in multi.ROIContourSequence[0].ContourSequence]
    assert all("ReferencedFrameNumber" in r for r in refs)
    classic = read_headers(sorted(PROSTATEX_T2.glob("*.dcm")))
    frames = read_headers([legacy])
    a = _roi_mask(classic_path, classic, "Prostate")
    b = _roi_mask(multi_path, frames, "Prostate")
    assert a.sum() > 1000
    score = dice(a, b)
    print(f"TAPS prostate, classic vs multi-frame T2: Dice {score:.4f}, {a.sum()} voxels")
    assert score >= 0.99


DIXON_MODEL = Path(__file__).parents[2] / "models" / "pelvis-dixon-demo"


def _seg_masks(path: Path, reference: Slices) -> dict[str, np.ndarray]:
    """A pydicom-only SEG reader (the unit tests' one) on ``reference``."""
    from tests.unit.test_seg import read_with_pydicom

    return read_with_pydicom(path, SimpleNamespace(volume=reference))  # type: ignore[arg-type]


@pytest.mark.slow  # ~40 s: nnU-Net twice on the phantom
def test_one_object_mdixon_runs_the_dixon_model_and_seg_goes_out(
    make_gateway, orthanc, tmp_path
) -> None:
    """The T2 as a classic series and the four Dixon images as frames of ONE Enhanced MR
    object: pelvis-dixon-demo names the water frames, Dice >= 0.90 per ROI; the destination
    takes [rtstruct, seg]: the SEG is dciodvfy-clean, highdicom and a pydicom-only reader give
    the RTSTRUCT's masks (Dice 1.0); sent twice, one SEG SOP Instance UID."""
    from tests.multiframe import mdixon_phantom

    phantom = mdixon_phantom(2027, tmp_path / "study", shuffle_seed=5)
    gw = make_gateway(
        destination_port=orthanc.dicom_port,
        rules=[rule("pelvis-dixon", ["pelvis-dixon-demo"])],
        destinations={
            "planning": {
                "ae_title": "PLANNING",
                "host": "127.0.0.1",
                "port": orthanc.dicom_port,
                "outputs": ["rtstruct", "seg"],
            }
        },
    )
    gw.start()
    assert gw.storescu(tmp_path / "study", required=True).returncode == 0
    (job,) = gw.wait_jobs(1)
    assert job["state"] == "done" and job["reason"] == "", job
    rt_ids = wait_for(lambda: orthanc.instances_of_modality("RTSTRUCT"), 30, what="RTSTRUCT")
    seg_ids = wait_for(lambda: orthanc.instances_of_modality("SEG"), 30, what="SEG")
    assert len(rt_ids) == len(seg_ids) == 1
    rt_path = orthanc.download(rt_ids[0], tmp_path / "rt.dcm")
    seg_path = orthanc.download(seg_ids[0], tmp_path / "seg.dcm")
    t2 = read_headers(list(phantom.t2.files))
    masks = rasterize_rtstruct(pydicom.dcmread(rt_path), t2)
    truth = phantom.labels("t2")
    spec = model_labels(DIXON_MODEL)
    for label, name in spec.items():
        assert dice(masks[name], truth == label) >= 0.90, name

    assert _dciodvfy_errors(seg_path) == []
    seg = hd.seg.segread(seg_path)
    assert {str(s.SegmentLabel) for s in seg.SegmentSequence} == set(spec.values())
    by_pydicom = _seg_masks(seg_path, t2)
    sources = [str(d.SOPInstanceUID) for d in t2.datasets]
    for number, item in enumerate(seg.SegmentSequence, 1):
        name = str(item.SegmentLabel)
        by_highdicom = seg.get_pixels_by_source_instance(
            sources, segment_numbers=[number], skip_overlap_checks=True
        )[..., 0].astype(bool)
        assert dice(by_highdicom, masks[name]) == 1.0, name
        assert dice(by_pydicom[name], masks[name]) == 1.0, name

    assert gw.storescu(tmp_path / "study", required=True).returncode == 0
    jobs = gw.wait_jobs(2)
    assert [j["state"] for j in jobs] == ["done", "done"]
    assert len(orthanc.instances_of_modality("SEG")) == 1
    assert len(orthanc.instances_of_modality("RTSTRUCT")) == 1


def model_labels(model_dir: Path) -> dict[int, str]:
    from gateway.segment.registry import load_model

    return {label: roi.name for label, roi in load_model(model_dir).labels.items()}


def test_classic_copy_for_a_planning_system_without_multiframe(
    make_gateway, orthanc, tmp_path
) -> None:
    """``rtstruct.multiframe_reference: classic_copy``: the T2 phantom as one Enhanced MR object
    -> a derived single-frame MR copy goes out first and the RTSTRUCT references it (no frame
    numbers), dciodvfy-clean, contours on the copy's slices (Dice >= 0.90 vs the truth)."""
    from gateway.demo.phantom import make_phantom, write_dicom_series
    from tests.multiframe import enhanced_mr

    phantom = make_phantom(3131)
    classic = write_dicom_series(phantom, tmp_path / "classic", seed=3131)
    source = enhanced_mr(
        [list(classic.files)],
        tmp_path / "send" / "t2.dcm",
        series_description="t2_tse_tra enhanced",
        shuffle_seed=3,
    )
    gw = make_gateway(
        destination_port=orthanc.dicom_port, rtstruct={"multiframe_reference": "classic_copy"}
    )
    gw.start()
    assert gw.storescu(tmp_path / "send", required=True).returncode == 0
    (job,) = gw.wait_jobs(1)
    assert job["state"] == "done", job
    rt_ids = wait_for(lambda: orthanc.instances_of_modality("RTSTRUCT"), 30, what="RTSTRUCT")
    rt_path = orthanc.download(rt_ids[0], tmp_path / "rt.dcm")
    assert _dciodvfy_errors(rt_path) == []
    rt = pydicom.dcmread(rt_path)
    copies = orthanc.instances_of_modality("MR")
    assert len(copies) == len(classic.files)
    copy_files = [orthanc.download(i, tmp_path / f"copy{n}.dcm") for n, i in enumerate(copies)]
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in copy_files]
    assert {str(h.SOPClassUID) for h in headers} == {"1.2.840.10008.5.1.4.1.1.4"}
    assert "DERIVED" in headers[0].ImageType
    source_ref = headers[0].SourceImageSequence[0]
    assert str(source_ref.ReferencedSOPInstanceUID) == source.sop_instance_uid
    assert _dciodvfy_errors(copy_files[0]) == []
    uids = {str(h.SOPInstanceUID) for h in headers}
    referenced = [
        c.ContourImageSequence[0] for r in rt.ROIContourSequence for c in r.ContourSequence
    ]
    assert referenced and all(str(r.ReferencedSOPInstanceUID) in uids for r in referenced)
    assert not any("ReferencedFrameNumber" in r for r in referenced)
    masks = rasterize_rtstruct(rt, headers)
    truth = sitk_array(phantom.labels)
    for label, name in model_labels(Path(__file__).parents[2] / "models" / "pelvis-demo").items():
        assert dice(masks[name], truth == label) >= 0.90, name


def sitk_array(image: object) -> np.ndarray:
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(image)
