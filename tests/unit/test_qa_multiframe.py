"""The QA loop on a multi-frame primary: the AI set references frames of one Enhanced MR
object; the approved set that comes back (edited) is paired, read back onto the frames and
compared, per ROI."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.uid import generate_uid

from gateway.config import GatewayConfig, RoiSpec, RtstructConfig
from gateway.contour import rtstruct
from gateway.db.database import Store
from gateway.db.records import JobState, QaStatus, StructureSetState
from gateway.demo.phantom import make_phantom, write_dicom_series
from gateway.imaging import read_image_set
from gateway.job import JobOutcome, ModelOutcome, ModelState, Provenance, RoiOutcome
from gateway.qa.loop import QaLoop
from gateway.receive.receiver import Receiver
from gateway.receive.spool import Spool
from tests.multiframe import enhanced_mr

NAMES = {1: "Prostate", 2: "Bladder", 3: "Rectum"}


def _bytes(ds: Dataset) -> bytes:
    buffer = DicomBytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_an_edited_approval_on_frames_is_compared_per_roi(tmp_path: Path) -> None:
    phantom = make_phantom(91, shape=(12, 64, 64))
    series = write_dicom_series(phantom, tmp_path / "classic", seed=91)
    source = enhanced_mr([list(series.files)], tmp_path / "mf" / "t2.dcm", shuffle_seed=2)
    store = Store(f"sqlite:///{tmp_path / 'aircon.db'}")
    cfg = GatewayConfig.model_validate({"peers": [{"ae_title": "TPS"}], "qa": {"peers": ["TPS"]}})
    receiver = Receiver(Spool(tmp_path / "spool"), store, qa_peers=("TPS",))
    receiver.accept(dcmread(source.path), source.path.read_bytes(), "SCANNER", "AIRCON")
    study = store.study(source.study_instance_uid)
    assert study is not None
    (image_set,) = study.series
    assert image_set.key.startswith(source.series_instance_uid + "#")
    volume = read_image_set(image_set)
    assert volume.frames and len(volume.frames) == 12

    truth = sitk.GetArrayFromImage(phantom.labels)
    prov = Provenance("pelvis", "1.0", "ab" * 32)
    structures = [
        rtstruct.Structure(truth == k, RoiSpec(name=n, color=(255, 0, 0)), prov)
        for k, n in NAMES.items()
    ]
    ai = rtstruct.build_structure_set(
        volume, structures, RtstructConfig(), input_series_uids=[image_set.key]
    )
    path = tmp_path / "out" / "ai.dcm"
    rtstruct.write_dataset(ai, path)
    job = store.create_job(source.study_instance_uid, "r", ["pelvis"], 1.0)
    outcome = JobOutcome(
        models={"pelvis": ModelOutcome(state=ModelState.DONE, provenance=prov)},
        rois=tuple(RoiOutcome(name=n, provenance=prov, volume_cc=1.0) for n in NAMES.values()),
        reference_series=source.series_instance_uid,
        reference_key=image_set.key,
    )
    store.finish_run(job.id, outcome, str(ai.SOPInstanceUID), str(path), [], 2.0)
    store.update_job(job.id, state=JobState.DONE)

    # The clinician moved the prostate by 2 pixels and approved; the rest is unchanged.
    moved = np.roll(truth == 1, 2, axis=2)
    edited = [
        rtstruct.Structure(moved if n == "Prostate" else s.mask, s.roi, prov)
        for n, s in zip(NAMES.values(), structures, strict=True)
    ]
    approved = rtstruct.build_structure_set(
        volume, edited, RtstructConfig(), input_series_uids=["approved"]
    )
    approved = copy.deepcopy(approved)
    approved.SOPInstanceUID = generate_uid()
    approved.file_meta.MediaStorageSOPInstanceUID = approved.SOPInstanceUID
    approved.ApprovalStatus = "APPROVED"
    refs = approved.ROIContourSequence[0].ContourSequence[0].ContourImageSequence[0]
    assert "ReferencedFrameNumber" in refs
    raw = _bytes(approved)
    receiver.accept(dcmread(DicomBytesIO(raw)), raw, "TPS", "AIRCON")
    QaLoop(cfg, store, owner="host:1:t").compare(str(approved.SOPInstanceUID))

    rec = store.structure_set(str(approved.SOPInstanceUID))
    assert rec is not None and rec.state is StructureSetState.COMPARED, rec
    rows = {r.roi: r for r in store.qa_records()}
    assert set(rows) == set(NAMES.values())
    assert all(r.status is QaStatus.COMPARED for r in rows.values())
    assert rows["Bladder"].dice == rows["Rectum"].dice == 1.0
    expected = 2 * np.sum(moved & (truth == 1)) / (np.sum(moved) + np.sum(truth == 1))
    assert rows["Prostate"].dice is not None
    assert abs(rows["Prostate"].dice - expected) < 1e-6 and rows["Prostate"].dice < 0.99
