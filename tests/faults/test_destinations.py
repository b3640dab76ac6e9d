"""Destinations that fail: down, refusing, answering a failure status, hanging mid-transfer.

The gateway runs as a real subprocess; the destination is a receiving node the test controls.
Retries back off (exponentially, with jitter, capped); a destination that comes back receives
everything in order of arrival; a permanent failure is parked with its reason and `aircon
resend` delivers it.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread

from gateway.demo.node import ReceivingNode
from gateway.demo.phantom import make_phantom, write_dicom_series
from tests.conftest import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # ~35 s: retries against a hanging node


def _study(root: Path, seed: int) -> Path:
    out = root / f"study-{seed}"
    write_dicom_series(make_phantom(seed), out, seed=seed)
    return out


def _job_of(gw: Any, study_uid: str) -> dict[str, Any] | None:
    return next((j for j in gw.jobs() if j["study_uid"] == study_uid), None)


def _uid(folder: Path) -> str:
    return str(dcmread(next(folder.glob("*.dcm")), stop_before_pixels=True).StudyInstanceUID)


def _delivery(gw: Any, study_uid: str) -> dict[str, Any]:
    job = _job_of(gw, study_uid)
    return job["deliveries"][0] if job and job["deliveries"] else {}


def test_destination_down_refusing_hanging_and_failing(make_gateway, tmp_path: Path) -> None:
    node = ReceivingNode(tmp_path / "planning", ae_title="ORTHANC")
    node.start()
    port = node.port
    node.stop()  # down from the start
    gw = make_gateway(
        port,
        assembly={"series_quiet_s": 1.5, "study_timeout_s": 120},
        delivery={"max_attempts": 40, "backoff_base_s": 0.4, "backoff_max_s": 2, "timeout_s": 3},
    )
    gw.start()
    studies = [_study(tmp_path, seed) for seed in (501, 502, 503)]
    uids = [_uid(s) for s in studies]

    # 1. Down: three studies queue up; one delivery at a time retries with backoff.
    for s in studies:
        assert gw.storescu(s).returncode == 0
    wait_for(
        lambda: (
            all(_delivery(gw, u) for u in uids)
            and max(_delivery(gw, u)["attempts"] for u in uids) >= 4
        ),
        240,
        what="retries to a destination that is down",
    )
    tried = [d for d in map(lambda u: _delivery(gw, u), uids) if d["attempts"]]
    assert all(d["state"] == "pending" for d in tried), tried
    assert all("association failed" in d["last_status"] for d in tried)

    audit = [r for r in gw.store().audit_rows() if r["event"] == "delivery"]
    # Nothing delivered or parked yet; every failed attempt is in the audit, with its reason.
    assert audit and all(r["outcome"] == "retry" for r in audit)
    assert all("association failed" in r["detail"] for r in audit)
    assert {r["study_uid"] for r in audit} <= set(uids)

    # Back up: everything arrives, in order of arrival.
    node = ReceivingNode(tmp_path / "planning", ae_title="ORTHANC", port=port)
    node.start()
    try:
        wait_for(lambda: len(node.receipts) >= 3, 120, what="the backlog to arrive")
        rt_study = [
            str(dcmread(node.folder / f"{uid}.dcm", stop_before_pixels=True).StudyInstanceUID)
            for uid in node.receipts[:3]
        ]
        assert rt_study == uids
        wait_for(lambda: all(_job_of(gw, u)["state"] == "done" for u in uids), 60)

        # 2. Refusing associations, then accepting.
        node.mode = "reject"
        s4 = _study(tmp_path, 504)
        u4 = _uid(s4)
        assert gw.storescu(s4).returncode == 0
        wait_for(lambda: _delivery(gw, u4).get("attempts", 0) >= 2, 120, what="refused retries")
        assert "rejected" in _delivery(gw, u4)["last_status"]
        node.mode = "ok"
        wait_for(lambda: _job_of(gw, u4)["state"] == "done", 60, what="delivery after refusal")

        # 3. Hanging mid-transfer: the gateway gives up after delivery.timeout_s and retries.
        node.hang_s = 8
        node.mode = "hang"
        s5 = _study(tmp_path, 505)
        u5 = _uid(s5)
        t0 = time.monotonic()
        assert gw.storescu(s5).returncode == 0
        wait_for(lambda: _delivery(gw, u5).get("attempts", 0) >= 1, 120, what="a timed-out send")
        assert _delivery(gw, u5)["state"] == "pending"
        echo = subprocess.run(
            ["echoscu", "-aet", "STORESCU", "-aec", "AIRCON", "127.0.0.1", str(gw.port)],
            capture_output=True,
        )
        assert echo.returncode == 0  # the gateway keeps answering while a send hangs
        node.mode = "ok"
        wait_for(lambda: _job_of(gw, u5)["state"] == "done", 90, what="delivery after a hang")
        assert time.monotonic() - t0 > 3

        # 4. A failure status: parked at once with its reason; `aircon resend` delivers it.
        node.mode = "fail"
        s6 = _study(tmp_path, 506)
        u6 = _uid(s6)
        assert gw.storescu(s6).returncode == 0
        wait_for(lambda: _job_of(gw, u6) and _job_of(gw, u6)["state"] == "failed", 120)
        parked = _delivery(gw, u6)
        assert parked["state"] == "failed" and parked["attempts"] == 1
        assert "0xC000" in parked["last_status"]
        node.mode = "ok"
        job6 = _job_of(gw, u6)["job"]
        out = subprocess.run(
            [sys.executable, "-m", "gateway", "-c", str(gw.config_path), "resend", str(job6)],
            capture_output=True,
            text=True,
            cwd=gw.work,
        )
        assert out.returncode == 0, out.stderr
        wait_for(lambda: _job_of(gw, u6)["state"] == "done", 60, what="the resent delivery")

        # Exactly one RTSTRUCT per study at the destination; the audit shows each outcome.
        per_study: dict[str, set[str]] = {}
        for f in node.files():
            ds = dcmread(f, stop_before_pixels=True)
            per_study.setdefault(str(ds.StudyInstanceUID), set()).add(str(ds.SOPInstanceUID))
        assert {u: len(v) for u, v in per_study.items()} == {u: 1 for u in uids + [u4, u5, u6]}
        outcomes = {
            (r["study_uid"], r["outcome"])
            for r in gw.store().audit_rows()
            if r["event"] == "delivery"
        }
        assert (u6, "rejected") in outcomes and (u6, "delivered") in outcomes
    finally:
        node.stop()
