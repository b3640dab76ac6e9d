"""The same 164-instance study sent twice in a row, the second send starting while the first
job runs. Defect found from outside: a readiness check left over from the first job found the T2
series quiet while the second association was still sending the study's other series, fixed the
job's inputs early, and the planning system got an extra delivery. A study with an association
still sending it is never ready."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest

from gateway.demo.launcher import free_port, write_config
from gateway.demo.node import ReceivingNode
from gateway.dicom.scu import store
from tests.conftest import GatewayProcess, wait_for
from tests.faults.harness import QUICK_MODEL, gateway_overrides, write_models

pytestmark = [pytest.mark.integration, pytest.mark.slow]

T2_MODEL = """\
name: t2-threshold
kind: python
version: "1.0"
description: Test model; label 1 above a percentile of the axial T2, after a pause.
python:
  entry: fault_threshold:segment
  options: {level: 95, seconds: 3}
inputs:
  - name: T2
    primary: true
    select: {Modality: "^MR$", SeriesDescription: "(?i)t2.*(tra|ax)"}
labels:
  1: {name: Bright, color: [255, 255, 0], type: CONTROL}
"""


def _send_slowly(gw: GatewayProcess, files: list[Path]) -> tuple[float, float]:
    """One association, about 50 ms between instances (a scanner's pace, ~8 s in all); the
    time of its first request and of its last instance's response (it is sending between)."""
    acked: list[float] = []

    def paced(_n: int) -> None:
        acked.append(time.time())
        time.sleep(0.05)

    t0 = time.time()
    statuses = store(gw.dest, "STORESCU", files, progress=paced)
    assert set(statuses) == {0} and len(acked) == len(files)
    return t0, acked[-1]


def test_a_study_sent_again_while_its_job_runs_is_contoured_only_from_complete_input(
    prostatex: Path, tmp_path: Path
) -> None:
    models = write_models(tmp_path / "models")
    (models / "t2-threshold").mkdir()
    (models / "t2-threshold" / "model.yaml").write_text(T2_MODEL)
    (models / "t2-threshold" / "fault_threshold.py").write_text(
        (models / QUICK_MODEL / "fault_threshold.py").read_text()
    )
    overrides = gateway_overrides(models, "t2-threshold")
    overrides["limits"] = {"max_instances_per_study": 10000}
    node = ReceivingNode(tmp_path / "planning", ae_title="ORTHANC", port=free_port())
    node.start()
    gw = GatewayProcess(
        write_config(tmp_path / "gw", free_port(), destination_port=node.port, overrides=overrides)
    )
    files = sorted(prostatex.rglob("*.dcm"))
    assert len(files) == 164
    # The axial T2 first: it is quiet long before the association has sent everything.
    files.sort(key=lambda f: "t2tsetra" not in str(f))
    try:
        gw.start()
        db = gw.store()
        sends = [_send_slowly(gw, files)]
        wait_for(
            lambda: any(j.state == "running" for j in db.list_jobs()),
            120,
            interval=0.1,
            what="the first job to run",
        )
        sends.append(_send_slowly(gw, files))

        def settled() -> list | None:
            jobs = db.list_jobs()
            return jobs if jobs and all(j.state in ("done", "failed") for j in jobs) else None

        time.sleep(2 * gw.cfg.assembly.series_quiet_s)
        jobs = wait_for(settled, 180, interval=0.5, what="the jobs to finish")
        assert 1 <= len(jobs) <= 2 and {j.state for j in jobs} == {"done"}
        for job in jobs:
            ready = job.stages["ready"]
            for start, end in sends:
                assert not start <= ready <= end, (
                    f"job {job.id} fixed its inputs at {ready:.2f} while an association was "
                    f"sending the study ({start:.2f}-{end:.2f})"
                )
        if len(jobs) == 2:  # the newest: inputs fixed after the second association ended
            assert jobs[0].stages["ready"] >= sends[1][1]
        # Exactly one delivery per job (a repeat carries the same RTSTRUCT UID).
        assert sum(Counter(node.receipts).values()) == len(jobs)
        assert set(node.receipts) == {j.rtstruct_uid for j in jobs}
    finally:
        gw.stop()
        node.stop()
