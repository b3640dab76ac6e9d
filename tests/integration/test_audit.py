"""Audit trail, logs without patient data, and retention, on the gateway as a subprocess."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from pydicom import dcmread

from gateway.demo.node import ReceivingNode
from gateway.demo.phantom import make_phantom, write_dicom_series
from tests.conftest import wait_for
from tests.console_client import csrf_of, html_pages, signed_in
from tests.sinks import Webhook

pytestmark = pytest.mark.integration

# Unique strings: if any shows up in a log or a table, patient data leaked.
NAME = "Quaxlebrook^Zephyrine Oddvarsdottir"
PATIENT_ID = "PID-7Q4X9ZK2W"
BIRTH_DATE = "19230417"


def _dump(db: Path) -> str:
    con = sqlite3.connect(db)
    try:
        return "\n".join(con.iterdump())
    finally:
        con.close()


def test_audit_trail_without_patient_data_and_retention(make_gateway, tmp_path: Path) -> None:
    node = ReceivingNode(tmp_path / "planning", ae_title="ORTHANC")
    node.start()
    hook = Webhook().__enter__()
    try:
        gw = make_gateway(
            node.port,
            # Alerts (the kept study's delivery is parked, its job fails) go to a webhook.
            alerts={"sinks": [f"json://127.0.0.1:{hook.port}/hook"], "check_interval_s": 1},
            paths={"log": str(tmp_path / "logs" / "aircon.log")},
            delivery={"max_attempts": 1, "backoff_base_s": 0.5, "backoff_max_s": 1},
            # Retention 10 s (as days), checked every second: delivered studies go quickly.
            storage={"min_free_mb": 100, "retention_days": 10 / 86400, "purge_interval_s": 1},
        )
        # Keep the spool/output layout write_config chose, add the log file.
        gw.start()
        kept = tmp_path / "kept"
        purged = tmp_path / "purged"
        for folder, seed in ((purged, 611), (kept, 612)):
            series = write_dicom_series(
                make_phantom(seed), folder, seed=seed, patient_name=NAME, patient_id=PATIENT_ID
            )
            for f in folder.glob("*.dcm"):  # a birth date too
                ds = dcmread(f)
                ds.PatientBirthDate = BIRTH_DATE
                ds.save_as(f)
            assert series
        purged_uid = str(dcmread(next(purged.glob("*.dcm"))).StudyInstanceUID)
        kept_uid = str(dcmread(next(kept.glob("*.dcm"))).StudyInstanceUID)

        assert gw.storescu(purged).returncode == 0
        wait_for(lambda: node.receipts, 240, what="the first RTSTRUCT")
        node.mode = "fail"  # the second study's delivery is rejected: undelivered, kept
        assert gw.storescu(kept).returncode == 0
        gw.wait_jobs(2)

        spool = gw.cfg.paths.spool
        wait_for(lambda: not (spool / purged_uid).exists(), 60, what="retention to purge")
        assert len(list((spool / kept_uid).rglob("*.dcm"))) == 24  # undelivered: never purged
        studies = {s["study_uid"] for s in gw.store().list_studies()}
        assert kept_uid in studies and purged_uid not in studies

        # The audit trail: who, what, when, outcome; as CSV from the CLI.
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "gateway",
                "-c",
                str(gw.config_path),
                "audit",
                "--since",
                "1h",
                "--csv",
            ],
            capture_output=True,
            text=True,
            cwd=gw.work,
        )
        assert out.returncode == 0, out.stderr
        rows = list(csv.DictReader(io.StringIO(out.stdout)))
        got = {(r["event"], r["outcome"], r["study_uid"]) for r in rows}
        assert {
            ("received", "stored", purged_uid),
            ("job", "done", purged_uid),
            ("delivery", "delivered", purged_uid),
            ("purge", "deleted", purged_uid),
            ("delivery", "rejected", kept_uid),
            ("job", "failed", kept_uid),
        } <= got
        received = next(r for r in rows if r["event"] == "received" and r["study_uid"] == kept_uid)
        assert received["calling_ae"] == "STORESCU" and received["address"] == "127.0.0.1"
        assert received["instances"] == "24" and received["series_uid"]
        job = next(r for r in rows if r["event"] == "job" and r["study_uid"] == purged_uid)
        assert job["model"] == "pelvis-demo 1.0.0"
        delivery = next(
            r for r in rows if r["event"] == "delivery" and r["study_uid"] == purged_uid
        )
        assert delivery["destination"] == "planning"
        assert "0xC000" in next(
            r["detail"] for r in rows if r["event"] == "delivery" and r["study_uid"] == kept_uid
        )
        # The console: every page, as an admin sees them, and the exact-match patient search.
        console = signed_in(gw, "olga", "admin")
        job_ids = [j["job"] for j in gw.jobs()]
        pages = html_pages(console, job_ids)
        assert len(pages) >= 12 and kept_uid in pages["/studies"]
        token = csrf_of(pages["/studies"])
        found = console.post(
            "/studies/search",
            data={"csrf": token, "patient_id": PATIENT_ID},
            follow_redirects=True,
        ).text
        assert kept_uid in found and "Studies of the patient searched for" in found
        nobody = console.post(
            "/studies/search",
            data={"csrf": token, "patient_id": "someone else"},
            follow_redirects=True,
        ).text
        assert kept_uid not in nobody
        wait_for(lambda: hook.posts, 30, what="the alert posted")
        assert any(kept_uid in json.dumps(p) for p in hook.posts)  # UIDs and reasons
    finally:
        node.stop()
        hook.__exit__()
    gw.stop()

    # No patient name, ID or birth date in any log file or in any table of either database.
    texts = {
        "stdout/stderr log": gw.log(),
        "log file": (tmp_path / "logs" / "aircon.log").read_text(errors="replace"),
        "database": _dump(Path(gw.cfg.database.url.removeprefix("sqlite:///"))),
        "queue": _dump(gw.cfg.queue.path),
        "audit CSV": out.stdout,
        **{f"console page {url}": html for url, html in pages.items()},
        **{f"alert {i}": json.dumps(p) for i, p in enumerate(hook.posts)},
    }
    assert "pelvis-demo" in texts["log file"]  # the log file is really written
    for where, text in texts.items():
        for secret in (NAME, *NAME.split("^"), PATIENT_ID, BIRTH_DATE):
            assert secret not in text, f"{secret!r} found in the {where}"
