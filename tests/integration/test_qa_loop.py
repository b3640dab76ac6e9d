"""The clinical QA loop end to end: AI contours out to Orthanc, the clinician's approved version
back from Orthanc's AE, compared per ROI, listed by ``aircon qa``; no patient data on the way."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.filebase import DicomBytesIO

from gateway.demo.phantom import make_phantom, write_dicom_series
from gateway.imaging import sort_slices
from tests.conftest import wait_for
from tests.qa_clinician import Clinician

pytestmark = pytest.mark.integration

# Unique strings: if any shows up in a table, a log, a listing or a report, patient data leaked.
NAME = "Brindlewick^Ottoline Vasquerre"
PATIENT_ID = "PID-QA-8K3M2R"
BIRTH_DATE = "19310922"


def _cli(config: Path, *args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "gateway", "-c", str(config), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def _http(orthanc: Any, method: str, path: str, body: bytes, kind: str) -> Any:
    req = urllib.request.Request(
        f"http://127.0.0.1:{orthanc.http_port}{path}",
        data=body,
        method=method,
        headers={"Content-Type": kind},
    )
    with urllib.request.urlopen(req, timeout=60) as r:
        data = r.read()
    return json.loads(data) if data[:1] in (b"{", b"[") else data


def _send_back_from_orthanc(orthanc: Any, approved: Any, port: int) -> None:
    """Upload the approved set to Orthanc, then let Orthanc C-STORE it to AIRCON."""
    buffer = DicomBytesIO()
    approved.save_as(buffer, enforce_file_format=True)
    uploaded = _http(orthanc, "POST", "/instances", buffer.getvalue(), "application/dicom")
    modality = {"AET": "AIRCON", "Host": "127.0.0.1", "Port": port}
    _http(orthanc, "PUT", "/modalities/aircon", json.dumps(modality).encode(), "application/json")
    body = json.dumps({"Resources": [uploaded["ID"]], "Synchronous": True}).encode()
    _http(orthanc, "POST", "/modalities/aircon/store", body, "application/json")


def test_clinician_edits_come_back_and_are_measured(make_gateway, orthanc, tmp_path) -> None:
    # 1 mm pixels: a 2 mm edit is two pixels, so the expected distances are exact on the grid.
    phantom = make_phantom(4242, shape=(24, 120, 120), spacing=(3.0, 1.0, 1.0))
    series = write_dicom_series(
        phantom, tmp_path / "study", seed=4242, patient_name=NAME, patient_id=PATIENT_ID
    )
    for f in series.files:
        ds = dcmread(f)
        ds.PatientBirthDate = BIRTH_DATE
        ds.save_as(f)
    gw = make_gateway(
        destination_port=orthanc.dicom_port,
        peers=[{"ae_title": "STORESCU"}, {"ae_title": "ORTHANC"}],
        qa={"peers": ["ORTHANC"]},
        paths={"log": str(tmp_path / "logs" / "aircon.log")},
    )
    gw.start()
    assert gw.storescu(tmp_path / "study").returncode == 0
    [job] = gw.wait_jobs(1)
    assert job["state"] == "done", job
    [rt_id] = wait_for(lambda: orthanc.instances_of_modality("RTSTRUCT"), 60, what="RTSTRUCT")
    ai = dcmread(orthanc.download(rt_id, tmp_path / "ai.dcm"))
    assert str(ai.SOPInstanceUID) == job["rtstruct_uid"]

    # The clinician: prostate grown by 2 mm on three slices, bladder untouched, one rectum
    # slice deleted and the rectum renamed to a synonym, a CTV added; approved as a new version.
    reference = sort_slices([dcmread(f, stop_before_pixels=True) for f in series.files])[0]
    clinician = Clinician(ai, reference)
    _, added_path = clinician.grow("Prostate", 2.0, slices=3)
    clinician.delete_slice("Rectum")
    clinician.rename("Rectum", "Rektum")
    clinician.add("CTV_Prostate", like="Prostate", margin_mm=5.0)
    approved = clinician.approve()
    _send_back_from_orthanc(orthanc, approved, gw.port)

    def compared() -> list[dict[str, Any]] | None:
        sets = gw.store().structure_sets()
        return sets if sets and sets[0].state.value == "compared" else None

    wait_for(compared, 60, what="the approved structure set to be compared")
    report = json.loads(_cli(gw.config_path, "qa", "--json"))
    [pairing] = report["structure_sets"]
    assert pairing["structure_set_uid"] == str(approved.SOPInstanceUID)
    assert pairing["ai_structure_set_uid"] == job["rtstruct_uid"]  # names the AI set it answers
    assert pairing["calling_ae"] == "ORTHANC" and pairing["approval_status"] == "APPROVED"
    rois = {r["roi"] or r["approved_roi"]: r for r in pairing["rois"]}

    bladder = rois["Bladder"]
    assert (bladder["dice"], bladder["apl"], bladder["unchanged"]) == (1.0, 0.0, True)
    prostate = rois["Prostate"]
    pixel = 1.0
    assert abs(prostate["hd95"] - 2.0) <= pixel / 2  # the edit's 2 mm, within half a voxel
    assert abs(prostate["apl"] - added_path) <= pixel  # the grown contours' length, one edge
    assert prostate["unchanged"] is False and prostate["surface_dice"] == 1.0
    rectum = rois["Rectum"]
    assert rectum["approved_roi"] == "Rektum" and rectum["status"] == "compared"
    assert rectum["dice"] < 1.0 and rectum["apl"] == 0.0  # a deletion adds no path
    assert rois["CTV_Prostate"]["status"] == "added"
    assert rois["CTV_Prostate"]["dice"] is None  # listed, not scored

    summary = {(r["roi"], r["window"]): r for r in report["summary"]["rois"]}
    assert summary[("Bladder", "all")]["unchanged_pct"] == 100.0
    assert summary[("Prostate", "all")]["cases"] == 1

    # The same structure set sent again: still one comparison.
    _send_back_from_orthanc(orthanc, approved, gw.port)
    wait_for(
        lambda: any(r["outcome"] == "received again" for r in gw.store().audit_rows()),
        30,
        what="the resend",
    )
    assert len(gw.store().qa_records()) == len(pairing["rois"])

    # The physicist registers an incident about this job (the register links it to the study
    # and model version); then: no patient name, ID or birth date in the tables (qa, alerts,
    # incidents, structure sets, audit), the log, the listings or the report.
    _cli(
        gw.config_path,
        "incident",
        "open",
        "--job",
        str(job["job"]),
        "--severity",
        "low",
        "--description",
        "prostate apex under-contoured on three slices",
        "--by",
        "J. Physicist",
    )
    [incident] = json.loads(_cli(gw.config_path, "incident", "list", "--json"))
    assert incident["study_uid"] == job["study_uid"] and incident["model_version"]
    con = sqlite3.connect(gw.cfg.database.url.removeprefix("sqlite:///"))
    try:
        tables = "\n".join(con.iterdump())
    finally:
        con.close()
    outputs = [
        tables,
        (tmp_path / "logs" / "aircon.log").read_text(),
        _cli(gw.config_path, "qa"),
        _cli(gw.config_path, "qa", "cases"),
        _cli(gw.config_path, "incident", "list", "--csv"),
        _cli(gw.config_path, "qa", "alerts"),
    ]
    out = tmp_path / "report"
    _cli(gw.config_path, "qa", "report", "--since", "1d", "--out", str(out))
    outputs += [p.read_text(errors="replace") for p in out.iterdir() if p.is_file()]
    assert "qa" in tables and "structure_sets" in tables
    for text in outputs:
        for secret in (NAME, NAME.split("^")[0], PATIENT_ID, BIRTH_DATE):
            assert secret not in text
