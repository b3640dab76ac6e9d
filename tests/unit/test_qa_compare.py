"""The QA step on a real (phantom) study without sockets: the receiver keeps the images and the
approved set, a finished job holds the AI set, QaLoop pairs and compares them. Malformed and
repeated input, interruptions and several model versions on one series."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.uid import generate_uid

from gateway.config import GatewayConfig, RoiSpec, RtstructConfig
from gateway.contour import rtstruct
from gateway.db.database import Store
from gateway.db.records import JobState, StructureSetState
from gateway.demo.phantom import make_phantom, write_dicom_series
from gateway.imaging import read_series
from gateway.job import JobOutcome, ModelOutcome, ModelState, Provenance, RoiOutcome
from gateway.qa.loop import QaLoop
from gateway.qa_policy import QaConfig
from gateway.receive.receiver import Receiver
from gateway.receive.recovery import recover_returned
from gateway.receive.spool import Spool

NAMES = {1: "Prostate", 2: "Bladder", 3: "Rectum"}
PATIENT = "Quillfeather^Amadea"


def _bytes(ds: Dataset) -> bytes:
    buffer = DicomBytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> Any:
    folder = tmp_path_factory.mktemp("phantom")
    ph = make_phantom(77, shape=(12, 64, 64))
    series = write_dicom_series(ph, folder, seed=77, patient_name=PATIENT, patient_id="PID-77")
    return ph, series


class Site:
    """A gateway's database and folders holding one study and its finished jobs."""

    def __init__(self, tmp_path: Path, phantom: Any) -> None:
        ph, series = phantom
        self.store = Store(f"sqlite:///{tmp_path / 'aircon.db'}")
        self.cfg = GatewayConfig.model_validate(
            {"peers": [{"ae_title": "TPS"}], "qa": {"peers": ["TPS"]}}
        )
        self.receiver = Receiver(Spool(tmp_path / "spool"), self.store, qa_peers=("TPS",))
        for f in series.files:
            ds = dcmread(f)
            self.receiver.accept(ds, f.read_bytes(), "SCANNER", "AIRCON")
        self.volume = read_series(series.files)
        self.truth = sitk.GetArrayFromImage(ph.labels)
        self.out = tmp_path / "out"
        self.loop = QaLoop(self.cfg, self.store, owner="host:1:t")

    def job(self, version: str, shift: int = 0) -> tuple[int, Dataset]:
        """A finished job of model 'pelvis' ``version`` (its prostate shifted by ``shift``)."""
        prov = Provenance("pelvis", version, "ab" * 32)
        masks = {n: self.truth == k for k, n in NAMES.items()}
        masks["Prostate"] = np.roll(masks["Prostate"], shift, axis=2)
        structures = [
            rtstruct.Structure(m, RoiSpec(name=n, color=(255, 0, 0)), prov)
            for n, m in masks.items()
        ]
        uid = self.volume.series_instance_uid
        ds = rtstruct.build_structure_set(
            self.volume, structures, RtstructConfig(), input_series_uids=[f"{uid}.{version}"]
        )
        path = self.out / f"{ds.SOPInstanceUID}.dcm"
        rtstruct.write_dataset(ds, path)
        job = self.store.create_job(self.volume.study_instance_uid, "r", ["pelvis"], 1.0)
        outcome = JobOutcome(
            models={"pelvis": ModelOutcome(state=ModelState.DONE, provenance=prov)},
            rois=tuple(RoiOutcome(name=n, provenance=prov, volume_cc=1.0) for n in masks),
            reference_series=uid,
        )
        self.store.finish_run(job.id, outcome, str(ds.SOPInstanceUID), str(path), [], 2.0)
        self.store.update_job(job.id, state=JobState.DONE)
        return job.id, ds

    def send_back(
        self, approved: Dataset, calling_ae: str = "TPS", garbage: dict[bytes, bytes] | None = None
    ) -> str:
        """Receive ``approved`` as sent (its bytes with ``garbage`` swapped in), compare it."""
        raw = _bytes(approved)
        for placeholder, value in (garbage or {}).items():
            raw = raw.replace(placeholder, value)
        self.receiver.accept(dcmread(DicomBytesIO(raw)), raw, calling_ae, "AIRCON")
        self.loop.compare(str(approved.SOPInstanceUID))
        return str(approved.SOPInstanceUID)

    def state(self, uid: str) -> Any:
        rec = self.store.structure_set(uid)
        assert rec is not None
        return rec


def approve(ai: Dataset, **changes: Any) -> Dataset:
    ds = copy.deepcopy(ai)
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.ApprovalStatus = "APPROVED"
    for key, value in changes.items():
        setattr(ds, key, value)
    return ds


def test_an_unedited_approval_is_measured_unchanged(tmp_path: Path, phantom: Any) -> None:
    site = Site(tmp_path, phantom)
    job_id, ai = site.job("1.0")
    uid = site.send_back(approve(ai))
    assert site.state(uid).state is StructureSetState.COMPARED
    rows = site.store.qa_records()
    assert {r.roi for r in rows} == set(NAMES.values())
    assert all(r.unchanged and r.dice == 1.0 and r.job_id == job_id for r in rows)
    assert {r.model_version for r in rows} == {"1.0"}


def test_the_approved_set_is_paired_with_the_model_version_it_names(
    tmp_path: Path, phantom: Any
) -> None:
    """The study was contoured by 1.0, then again by 2.0 after an upgrade; the clinician
    approved 1.0's proposal unchanged: the result belongs to 1.0, and is unchanged."""
    site = Site(tmp_path, phantom)
    first, ai_1 = site.job("1.0")
    site.job("2.0", shift=3)
    uid = site.send_back(approve(ai_1))
    assert site.state(uid).job_id == first
    rows = site.store.qa_records()
    assert {r.model_version for r in rows} == {"1.0"} and all(r.unchanged for r in rows)
    # When the planning system dropped every trace of the model: not guessed.
    bare = approve(ai_1, StructureSetDescription="")
    for roi in bare.StructureSetROISequence:
        roi.ROIGenerationDescription = ""
    del bare.ContributingEquipmentSequence
    other = site.send_back(bare)
    rec = site.state(other)
    assert rec.state is StructureSetState.UNPAIRED and "several model versions" in rec.reason


def test_a_malformed_approved_set_is_refused_with_a_reason_without_its_values(
    tmp_path: Path, phantom: Any
) -> None:
    site = Site(tmp_path, phantom)
    _, ai = site.job("1.0")
    # One ROI's number is garbage (a name, even): that ROI is skipped; two prostate contours
    # hold no numbers: skipped; the rest is read.
    broken = approve(ai)
    broken.StructureSetROISequence[1].ROINumber = 987654
    for contour in broken.ROIContourSequence[0].ContourSequence[:2]:
        contour.ContourData = [12345.6, 12345.6, 12345.6]
    uid = site.send_back(broken, garbage={b"987654": b"Doe^Jo", b"12345.6": b"Doe^Jon"})
    assert site.state(uid).state is StructureSetState.COMPARED
    rows = {r.roi: r for r in site.store.qa_records()}
    assert rows["Rectum"].unchanged and rows["Prostate"].dice < 1.0
    # Nothing readable at all: unpaired, saying so, and nothing of the file in the reason.
    empty = approve(ai)
    del empty.ROIContourSequence
    rec = site.state(site.send_back(empty))
    assert rec.state is StructureSetState.UNPAIRED and "no contour" in rec.reason
    names = approve(ai)
    names.StructureSetROISequence[0].ROINumber = 987654
    names.StructureSetROISequence[1].ROIName = names.StructureSetROISequence[2].ROIName
    rec = site.state(site.send_back(names, garbage={b"987654": b"Doe^Jo"}))
    assert rec.state is StructureSetState.UNPAIRED and "twice" in rec.reason
    for s in site.store.structure_sets():
        assert "Doe" not in s.reason and "Jon" not in s.reason


def test_an_interruption_leaves_the_set_pending_and_a_retry_compares_it(
    tmp_path: Path, phantom: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway.qa import metrics

    site = Site(tmp_path, phantom)
    _, ai = site.job("1.0")

    def disk_gone(*args: Any, **kwargs: Any) -> Any:
        raise OSError("I/O error")

    with monkeypatch.context() as m:
        m.setattr(metrics, "compare", disk_gone)
        uid = site.send_back(approve(ai))
    assert site.state(uid).state is StructureSetState.PENDING
    assert site.store.qa_records() == []
    site.loop.compare(uid)
    assert site.state(uid).state is StructureSetState.COMPARED


def test_a_resend_changes_nothing_of_a_compared_set(tmp_path: Path, phantom: Any) -> None:
    site = Site(tmp_path, phantom)
    _, ai = site.job("1.0")
    approved = approve(ai)
    uid = site.send_back(approved)
    before = site.state(uid)
    content = Path(before.path).read_bytes()
    forged = copy.deepcopy(approved)
    forged.StructureSetDate, forged.ApprovalStatus = "29991231", "UNAPPROVED"
    for ae in ("SCANNER", "TPS"):
        site.send_back(forged, calling_ae=ae)
        after = site.state(uid)
        assert dataclasses.replace(after, compared_at=None) == dataclasses.replace(
            before, compared_at=None
        )
        assert Path(after.path).read_bytes() == content
    assert len(site.store.qa_records()) == len(NAMES)


def test_a_returned_file_without_its_row_is_listed_not_compared(
    tmp_path: Path, phantom: Any
) -> None:
    site = Site(tmp_path, phantom)
    _, ai = site.job("1.0")
    approved = approve(ai)
    path = site.receiver.returned.write(
        str(approved.StudyInstanceUID),
        str(approved.SeriesInstanceUID),
        str(approved.SOPInstanceUID),
        _bytes(approved),
    )
    assert recover_returned(site.receiver.returned, site.receiver.store) == 1
    rec = site.state(str(approved.SOPInstanceUID))
    assert rec.state is StructureSetState.UNPAIRED and "send it again" in rec.reason
    assert rec.path == str(path)


def test_roi_tolerances_are_looked_up_like_roi_names() -> None:
    qa = QaConfig(roi_tolerance_mm={"rectum": 3.0})
    assert qa.tolerance_for("Rectum") == 3.0 and qa.tolerance_for("Bladder") == 2.0


def test_a_draft_that_deleted_an_roi_then_the_final_version_restores_it(
    tmp_path: Path, phantom: Any
) -> None:
    """The draft (earlier, deleting the rectum) raises a candidate; the final approved version
    with the rectum supersedes it and the candidate is dismissed, audited."""
    site = Site(tmp_path, phantom)
    _, ai = site.job("1.0")
    draft = approve(ai, StructureSetDate="20261101", StructureSetTime="080000")
    number = next(int(r.ROINumber) for r in draft.StructureSetROISequence if r.ROIName == "Rectum")
    draft.ROIContourSequence = [
        c for c in draft.ROIContourSequence if int(c.ReferencedROINumber) != number
    ]
    site.send_back(draft)
    [candidate] = site.store.incidents(state="candidate")
    assert candidate.roi == "Rectum" and "deleted" in candidate.title
    final = approve(ai, StructureSetDate="20261102", StructureSetTime="080000")
    site.send_back(final)
    assert site.state(str(draft.SOPInstanceUID)).state is StructureSetState.SUPERSEDED
    assert site.store.incidents(state="candidate") == []
    [dismissed] = site.store.incidents(state="dismissed")
    assert dismissed.id == candidate.id and dismissed.decided_by == "aircon"
    assert any(
        r["event"] == "incident" and r["outcome"] == "dismissed" for r in site.store.audit_rows()
    )


def test_an_approved_set_of_another_patient_is_not_compared(tmp_path: Path, phantom: Any) -> None:
    site = Site(tmp_path, phantom)
    _, ai = site.job("1.0")
    rec = site.state(site.send_back(approve(ai, PatientID="PID-OTHER")))
    assert rec.state is StructureSetState.UNPAIRED and "not the patient" in rec.reason
    assert "PID" not in rec.reason and site.store.qa_records() == []
