"""The QA loop's seams: approved RTSTRUCTs kept apart from the images, pairing and ROI matching,
the database claims, versions, alarms and the incident register."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from gateway.config import GatewayConfig, RoiSpec
from gateway.db.database import Store
from gateway.db.records import QaRecord, QaStatus, StructureSetRecord, StructureSetState
from gateway.qa.alarms import evaluate
from gateway.qa.pairing import AiSet, Answer, match_rois, pair, rank
from gateway.qa_policy import QaConfig
from gateway.receive.receiver import Receiver
from gateway.receive.spool import Spool
from tests.unit.test_qa_drift import simulated_clinic

STUDY, FRAME, SERIES = "1.2.826.0.1.1", "1.2.826.0.1.2", "1.2.826.0.1.3"


def answer(**kw: object) -> Answer:
    values: dict[str, object] = dict(
        sop_instance_uid="1.2.826.0.1.9",
        study_uid=STUDY,
        frame_of_reference_uid=FRAME,
        approval_status="APPROVED",
        contour_images=frozenset({"1.2.826.0.1.3.1", "1.2.826.0.1.3.2"}),
        referenced_series=frozenset({SERIES}),
    )
    return Answer(**{**values, **kw})  # type: ignore[arg-type]


def ai_set(job_id: int = 1, **kw: object) -> AiSet:
    values: dict[str, object] = dict(
        job_id=job_id,
        rtstruct_uid=f"1.2.826.0.1.8.{job_id}",
        study_uid=STUDY,
        frame_of_reference_uid=FRAME,
        reference_series=SERIES,
        reference_instances=frozenset({"1.2.826.0.1.3.1", "1.2.826.0.1.3.2", "1.2.826.0.1.3.3"}),
    )
    return AiSet(**{**values, **kw})  # type: ignore[arg-type]


def test_pairing_takes_the_latest_job_on_the_same_series_and_frame() -> None:
    assert pair(answer(), [ai_set(1), ai_set(2)]) == (ai_set(2), "")
    # Without image references, the referenced series decides.
    assert pair(answer(contour_images=frozenset()), [ai_set(1)])[0] == ai_set(1)


@pytest.mark.parametrize(
    ("approved", "candidates", "why"),
    [
        (answer(), [], "sent no structure set"),
        (answer(frame_of_reference_uid="1.2.826.0.1.77"), [ai_set()], "frame of reference"),
        (answer(contour_images=frozenset({"1.2.826.0.1.4.1"})), [ai_set()], "image series"),
        (answer(approval_status="REJECTED"), [ai_set()], "REJECTED"),
        (answer(sop_instance_uid="1.2.826.0.1.8.1"), [ai_set()], "AI structure set AIRCON sent"),
    ],
)
def test_an_unpaired_structure_set_says_why(approved, candidates, why) -> None:
    found, reason = pair(approved, candidates)
    assert found is None and why in reason


def test_rois_match_by_name_clinic_map_and_synonyms() -> None:
    ai = ["Prostate", "Bladder", "Rectum", "SeminalVes", "Femur_Head_L"]
    approved = ["prostate", "Urinary Bladder", "Rektum", "Seminal Vesicles", "CTV", "HipL"]
    clinic = {"hipl": RoiSpec(name="Femur_Head_L", color=(0, 255, 0))}
    m = match_rois(ai, approved, clinic)
    assert m.pairs == {
        "Prostate": "prostate",
        "Bladder": "Urinary Bladder",
        "Rectum": "Rektum",
        "SeminalVes": "Seminal Vesicles",
        "Femur_Head_L": "HipL",
    }
    assert m.added == ("CTV",) and m.deleted == ()
    assert match_rois(["Prostate", "Bladder"], ["Bladder"], {}).deleted == ("Prostate",)


def test_the_approved_version_counts_over_unapproved_then_the_latest() -> None:
    def rec(status: str, when: str, at: float) -> StructureSetRecord:
        return StructureSetRecord("1.2", STUDY, SERIES, FRAME, "TPS", "", 0, status, when, at)

    assert rank(rec("APPROVED", "20261101", 1)) > rank(rec("UNAPPROVED", "20261201", 2))
    assert rank(rec("APPROVED", "20261201", 1)) > rank(rec("APPROVED", "20261101", 2))


# -- reception ------------------------------------------------------------------------------------


def rtstruct(uid: str = "1.2.826.0.1.9") -> tuple[Dataset, bytes]:
    from pydicom.dataset import FileMetaDataset
    from pydicom.filebase import DicomBytesIO

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.481.3"
    ds.SOPInstanceUID = uid
    ds.StudyInstanceUID, ds.SeriesInstanceUID = STUDY, "1.2.826.0.1.5"
    ds.Modality = "RTSTRUCT"
    ds.PatientName, ds.PatientID = "Doe^Jane", "PID-123"
    ds.ApprovalStatus = "APPROVED"
    ds.StructureSetDate, ds.StructureSetTime = "20261129", "101500"
    ref = Dataset()
    ref.FrameOfReferenceUID = FRAME
    ds.ReferencedFrameOfReferenceSequence = [ref]
    buffer = DicomBytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return ds, buffer.getvalue()


def test_an_rtstruct_is_kept_apart_and_never_becomes_part_of_the_study(
    db: Store, tmp_path: Path
) -> None:
    receiver = Receiver(Spool(tmp_path / "spool"), db, qa_peers=("TPS",))
    ds, raw = rtstruct()
    receiver.accept(ds, raw, "TPS", "AIRCON", sop_class_uid=ds.SOPClassUID)
    [rec] = db.structure_sets()
    assert rec.state is StructureSetState.PENDING and rec.approval_status == "APPROVED"
    assert rec.frame_of_reference_uid == FRAME and rec.calling_ae == "TPS"
    assert Path(rec.path).read_bytes() == raw and Path(rec.path).is_relative_to(
        tmp_path / "returned"
    )
    assert db.study(STUDY) is None  # no images, no study to route: never sent to a model
    assert db.pending_structure_sets() == [rec.sop_instance_uid]
    # From a peer that is not a QA sender: kept and listed with the reason, not compared.
    ds2, raw2 = rtstruct("1.2.826.0.1.10")
    receiver.accept(ds2, raw2, "SCANNER", "AIRCON", sop_class_uid=ds2.SOPClassUID)
    other = db.structure_set("1.2.826.0.1.10")
    assert other is not None and other.state is StructureSetState.UNPAIRED
    assert "not one of qa.peers" in other.reason
    # The database holds no patient data from it.
    assert "Doe" not in json.dumps(
        [dataclasses.asdict(s) for s in db.structure_sets()], default=str
    )


def test_a_comparison_is_claimed_once_and_taken_back_when_its_owner_dies(
    db: Store, tmp_path: Path
) -> None:
    receiver = Receiver(Spool(tmp_path / "spool"), db, qa_peers=("TPS",))
    ds, raw = rtstruct()
    receiver.accept(ds, raw, "TPS", "AIRCON", sop_class_uid=ds.SOPClassUID)
    uid = str(ds.SOPInstanceUID)
    assert db.claim_structure_set(uid, "host:1:a", 100.0, 60.0)
    assert not db.claim_structure_set(uid, "host:2:b", 100.0, 60.0)
    assert db.reclaim_structure_sets(120.0, lambda owner: False) == []  # lease still valid
    assert db.reclaim_structure_sets(120.0, lambda owner: owner == "host:1:a") == [uid]
    assert db.claim_structure_set(uid, "host:2:b", 121.0, 60.0)


def qa_row(approved_uid: str, roi: str = "Prostate", job: int = 1, **kw: object) -> QaRecord:
    values: dict[str, object] = dict(
        job_id=job,
        study_uid=STUDY,
        model="pelvis-demo",
        model_version="1.0.0",
        roi=roi,
        approved_roi=roi,
        status=QaStatus.COMPARED,
        ai_uid="1.2.826.0.1.8",
        approved_uid=approved_uid,
        at=1000.0,
        dice=0.9,
    )
    return QaRecord(**{**values, **kw})  # type: ignore[arg-type]


def test_a_later_approved_version_supersedes_the_earlier_one(db: Store, tmp_path: Path) -> None:
    receiver = Receiver(Spool(tmp_path / "spool"), db, qa_peers=("TPS",))
    for uid, when in (("1.2.826.0.1.21", "20261129101500"), ("1.2.826.0.1.22", "20261129111500")):
        ds, raw = rtstruct(uid)
        ds.StructureSetDate, ds.StructureSetTime = when[:8], when[8:]
        receiver.accept(ds, raw, "TPS", "AIRCON", sop_class_uid=ds.SOPClassUID)
    # Compared in the wrong order: the later version still counts.
    for uid, dice in (("1.2.826.0.1.22", 0.8), ("1.2.826.0.1.21", 0.95)):
        db.claim_structure_set(uid, "o", 1.0, 60.0)
        db.finish_structure_set(
            uid, 2.0, job_id=1, ai_uid="1.2.826.0.1.8", records=[qa_row(uid, dice=dice)], rank=rank
        )
    states = {s.sop_instance_uid: s.state for s in db.structure_sets()}
    assert states == {
        "1.2.826.0.1.22": StructureSetState.COMPARED,
        "1.2.826.0.1.21": StructureSetState.SUPERSEDED,
    }
    assert [r.dice for r in db.qa_records()] == [0.8]
    assert len(db.qa_records(current=False)) == 2


def test_simulated_drift_raises_one_alarm_and_a_candidate_for_a_deleted_roi(db: Store) -> None:
    """The issue's acceptance through the database: 30 cases, the last 10 prostates edited by
    3 mm -> exactly one drift alarm for that ROI and model version; a deleted ROI -> one
    incident candidate; evaluating again raises nothing new."""
    rows = [
        dataclasses.replace(r, model="pelvis-demo", model_version="1.0.0", study_uid=STUDY)
        for r in simulated_clinic()
    ]
    deleted = qa_row("1.2.826.0.1.99", roi="Rectum", job=99, status=QaStatus.DELETED, dice=None)
    for r in [*rows, deleted]:
        uid = r.approved_uid
        with db.session() as s:
            from gateway.db.tables import StructureSetRow

            if s.get(StructureSetRow, uid) is None:
                s.add(
                    StructureSetRow(
                        sop_instance_uid=uid,
                        study_uid=STUDY,
                        series_uid=SERIES,
                        received_at=r.at,
                        path="",
                        state="comparing",
                    )
                )
    for uid in sorted({r.approved_uid for r in [*rows, deleted]}):
        mine = [r for r in [*rows, deleted] if r.approved_uid == uid]
        db.finish_structure_set(uid, 1.0, job_id=mine[0].job_id, ai_uid="1.2", records=mine)
    cfg = GatewayConfig(qa=QaConfig())
    keys = {(r.model, r.model_version, r.roi) for r in [*rows, deleted]}
    alarms, candidates = evaluate(cfg, db, keys, now=5.0)
    drift = [a for a in db.alerts() if a.kind == "drift"]
    assert len(drift) == 1 and drift[0].roi == "Prostate" and drift[0].model_version == "1.0.0"
    incident_rois = {(i.roi, i.state) for i in db.incidents()}
    assert ("Rectum", "candidate") in incident_rois
    assert alarms == 1 and candidates >= 1
    assert evaluate(cfg, db, keys, now=6.0) == (0, 0)  # idempotent
    assert any(r["event"] == "alert" for r in db.audit_rows())


def test_incident_register_moves_and_audits(db: Store) -> None:
    cand = db.add_incident(1.0, key="k1", state="candidate", title="Rectum deleted", job_id=3)
    assert cand is not None and db.add_incident(2.0, key="k1", state="candidate") is None
    with pytest.raises(ValueError, match="cannot be closed"):
        db.update_incident(cand, 3.0, "Dr A", "closed")
    db.update_incident(cand, 3.0, "Dr A", "open", severity="medium")
    row = db.update_incident(cand, 4.0, "Dr B", "closed", actions="model retrained")
    assert (row.state, row.severity, row.closed_by, row.actions) == (
        "closed",
        "medium",
        "Dr B",
        "model retrained",
    )
    outcomes = [r["outcome"] for r in db.audit_rows() if r["event"] == "incident"]
    assert outcomes == ["candidate", "accepted", "closed"]


def test_a_sustained_drift_is_one_alarm_not_a_candidate_per_case() -> None:
    from gateway.qa.drift import CandidateReason
    from gateway.qa.drift import evaluate as chart

    result = chart(
        [r for r in simulated_clinic() if r.roi == "Prostate"],
        QaConfig().control,
        candidate_dice=0.5,
    )
    far = [c for c in result.candidates if c.reason is CandidateReason.FAR_OUTSIDE]
    assert len(result.alarms) == 1 and len(far) <= 1


def test_retention_waits_for_a_pending_comparison_then_keeps_the_qa_results(
    db: Store, tmp_path: Path
) -> None:
    from gateway.config import StorageConfig
    from gateway.db.records import DeliveryState, InstanceRecord, JobState
    from gateway.retention import DAY_S, purge

    now = 100 * DAY_S
    spool, returned = Spool(tmp_path / "spool"), Spool(tmp_path / "returned")
    image = spool.write(STUDY, SERIES, "1.2.826.0.1.3.1", b"x")
    db.record_instance(
        InstanceRecord(
            STUDY, SERIES, "1.2.826.0.1.3.1", "1.2.840.10008.5.1.4.1.1.4", str(image), {}, {}
        ),
        calling_ae="S",
        called_ae="A",
        now=now - 40 * DAY_S,
    )
    job = db.create_job(STUDY, "mr", ["pelvis-demo"], now - 40 * DAY_S)
    [d] = db.create_deliveries(job.id, ["planning"])
    db.update_delivery(d, state=DeliveryState.DELIVERED)
    db.update_job(job.id, state=JobState.DONE)
    receiver = Receiver(spool, db, qa_peers=("TPS",), returned=returned)
    ds, raw = rtstruct()
    receiver.accept(ds, raw, "TPS", "AIRCON", sop_class_uid=ds.SOPClassUID)
    roots = (spool.root, returned.root)
    storage = StorageConfig(retention_days=30)

    assert purge(db, storage, roots, now=now).studies == 0  # its images are still needed
    uid = str(ds.SOPInstanceUID)
    db.claim_structure_set(uid, "o", now, 60)
    db.finish_structure_set(uid, now, job_id=job.id, ai_uid="1.2", records=[qa_row(uid)])
    assert purge(db, storage, roots, now=now).studies == 1
    assert not image.exists() and not list(returned.root.rglob("*.dcm"))
    assert [r.approved_uid for r in db.qa_records()] == [uid]  # the QA results stay
    kept = db.structure_set(uid)
    assert kept is not None and kept.state is StructureSetState.COMPARED and kept.path == ""
