"""Benchmark: time to render ``/metrics`` (gateway.monitor.metrics.render_metrics) with a
database of ``--jobs`` jobs (default 10,000) in SQLite.

The database is filled as the pipeline leaves it after that many studies: per job its stage
times and outcome (two models, five ROIs with provenance), 1-2 deliveries, and the audit rows
(received per series, association, job, delivery); 10 % of the jobs failed, a few are still open;
QA comparisons for 500 jobs, 20 alerts, two destinations' echo status.

Prints the first scrape of a process (everything read) and the median and range of ``--rounds``
scrapes of one :class:`MetricsExporter` (as the console keeps it) with one more job ended
before each (goal: median under 50 ms).

Run: ``python bench/console_metrics.py [--jobs 10000] [--rounds 20]``. Reports the CPU count.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sqlalchemy import insert  # noqa: E402

from gateway.config import GatewayConfig  # noqa: E402
from gateway.db.database import Store  # noqa: E402
from gateway.db.tables import AlertRow, AuditRow, DeliveryRow, JobRow, QaRow  # noqa: E402
from gateway.job import JobOutcome, ModelOutcome, ModelState, Provenance, RoiOutcome  # noqa: E402
from gateway.monitor.metrics import MetricsExporter, render_metrics  # noqa: E402

MODELS = ("pelvis", "taps")
ROIS = ("Bladder", "Rectum", "Prostate", "Femur_Head_L", "Femur_Head_R")
DESTINATIONS = ("planning", "archive")
T0 = 1_700_000_000.0


class Listening:
    def scp_listening(self) -> bool:
        return True


def config(tmp: Path) -> GatewayConfig:
    def model(name: str) -> dict[str, Any]:
        return {
            "name": name,
            "kind": "nnunet",
            "version": "1",
            "nnunet": {"folder": "nnunet"},
            "inputs": [{"name": "T2", "select": {"Modality": "^MR$"}}],
            "labels": {1: {"name": "Bladder", "color": [255, 255, 0]}},
        }

    dest = {"ae_title": "TPS", "host": "127.0.0.1", "port": 104}
    return GatewayConfig.model_validate(
        {
            "paths": {"spool": tmp / "spool"},
            "destinations": dict.fromkeys(DESTINATIONS, dest),
            "models": {m: model(m) for m in MODELS},
        }
    )


def uid(rng: random.Random) -> str:
    return "1.2.826.0.1.3680043.8.498." + ".".join(str(rng.randrange(10**9)) for _ in range(4))


def fill(store: Store, first: int, jobs: int, rng: random.Random, now: float = T0) -> int:
    """Jobs ``first`` .. ``first + jobs - 1`` with their rows, the last five still open;
    ``now``: when the newest ended. Returns the number of audit rows."""
    job_rows: list[dict[str, Any]] = []
    delivery_rows: list[dict[str, Any]] = []
    audit_rows: list[dict[str, Any]] = []
    qa_rows: list[dict[str, Any]] = []
    last = first + jobs - 1
    for i in range(first, last + 1):
        study, series = uid(rng), [uid(rng), uid(rng)]
        t = now - 42 - (last - i) * 60.0
        failed = rng.random() < 0.1
        open_ = i > last - 5 and jobs > 5
        stages = {"created": t, "received_first": t, "received_last": t + 20, "ready": t + 31}
        stages |= {"started": t + 31.5, "volume": t + 33, "segment": t + 40, "rtstruct": t + 41}
        if not open_:
            stages["failed" if failed else "delivered"] = t + 42
        outcome = JobOutcome(
            models={
                m: ModelOutcome(
                    state=ModelState.DONE,
                    provenance=Provenance(m, "1", "ab" * 32),
                    input_series=(series[0],),
                    volume_s=rng.uniform(0.5, 2),
                    wait_s=rng.uniform(0, 1),
                    segment_s=rng.uniform(2, 30),
                )
                for m in MODELS
            },
            rois=tuple(
                RoiOutcome(name=r, provenance=Provenance("pelvis", "1", "ab" * 32), volume_cc=50.0)
                for r in ROIS
            ),
            reference_series=series[0],
        ).model_dump(mode="json")
        state = "delivering" if open_ else "failed" if failed else "done"
        job_rows.append(
            {
                "id": i,
                "study_uid": study,
                "rule": "pelvis-mr" if i % 3 else "prostate-mr",
                "models": list(MODELS),
                "state": state,
                "reason": "delivery failed: planning: 0xA700" if failed else "",
                "input_series": series,
                "rtstruct_uid": uid(rng),
                "rtstruct_path": f"/var/rtstruct/{study}.dcm",
                "created_at": t,
                "stages": stages,
                "plan": {"models": {m: {"series": [series[0]]} for m in MODELS}},
                "outcome": outcome,
                "attempts": 1,
            }
        )
        who = {"calling_ae": "SCANNER", "address": "10.0.0.5", "study_uid": study}
        for s in series:
            audit_rows.append(
                {"at": t + 20, "event": "received", "outcome": "stored", "series_uid": s}
                | who
                | {"instances": 40, "detail": "TCP"}
            )
        audit_rows.append(
            {"at": t + 20, "event": "association", "outcome": "released", "instances": 80} | who
        )
        for k, dest in enumerate(DESTINATIONS[: 1 + i % 2]):
            parked = failed and k == 0
            dstate = "pending" if open_ else "failed" if parked else "delivered"
            delivery_rows.append(
                {
                    "job_id": i,
                    "destination": dest,
                    "state": dstate,
                    "attempts": 8 if parked else 1,
                    "last_status": "0xA700" if parked else "0x0000",
                    "delivered_at": None if parked or open_ else t + 42,
                }
            )
            if not open_:
                outcome_d = "parked" if parked else "delivered"
                audit_rows.append(
                    {"at": t + 42, "event": "delivery", "outcome": outcome_d, "job_id": i}
                    | {"destination": dest, "study_uid": study, "instances": 1}
                )
        if not open_:
            audit_rows.append(
                {"at": t + 42, "event": "job", "outcome": state, "job_id": i}
                | {"study_uid": study, "model": "pelvis 1, taps 1", "detail": "rule x"}
            )
        if i % 20 == 0:
            for roi in ROIS:
                qa_rows.append(
                    {"job_id": i, "study_uid": study, "model": "pelvis", "model_version": "1"}
                    | {"roi": roi, "approved_roi": roi, "status": "compared", "ai_uid": uid(rng)}
                    | {"approved_uid": uid(rng), "at": t + 86400, "dice": 0.9}
                    | {"surface_dice": rng.uniform(0.7, 1.0), "superseded": False}
                )
    with store.session() as s:
        s.execute(insert(JobRow), job_rows)
        s.execute(insert(DeliveryRow), delivery_rows)
        s.execute(insert(AuditRow), audit_rows)
        if qa_rows:
            s.execute(insert(QaRow), qa_rows)
    return len(audit_rows)


def setup(store: Store, jobs: int, rng: random.Random) -> None:
    audit = fill(store, 1, jobs, rng, now=time.time() - 3600)
    with store.session() as s:
        s.execute(
            insert(AlertRow),
            [
                {"key": f"a{k}", "kind": "job_failed", "at": T0, "state": "open"}
                | {"message": f"job {k} failed"}
                for k in range(20)
            ],
        )
    for dest in DESTINATIONS:
        store.record_echo(dest, True, T0, 12.5, "")
    for m in MODELS:
        store.set_component(f"model:{m}", "ok", T0)
    with store.session() as s:
        qa = s.query(QaRow).count()
        deliveries = s.query(DeliveryRow).count()
    print(f"database: {jobs} jobs, {deliveries} deliveries, {audit} audit rows, {qa} QA rows")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()
    print(f"CPU cores: {os.cpu_count()}; rounds {args.rounds} (median)")
    rng = random.Random(2026)
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(f"sqlite:///{Path(tmp) / 'aircon.db'}")
        setup(store, args.jobs, rng)
        cfg = config(Path(tmp))
        t = time.perf_counter()
        body, _ = render_metrics(cfg, store, Listening())
        cold = time.perf_counter() - t
        exporter = MetricsExporter(cfg, store, Listening())  # as the console keeps it
        exporter.render()
        times = []
        for k in range(args.rounds):
            # Between two scrapes a job ends (and its audit rows are written): real work.
            fill(store, args.jobs + 1 + k, 1, rng, now=time.time())
            t = time.perf_counter()
            body, _ = exporter.render()
            times.append(time.perf_counter() - t)
        lines = [ln for ln in body.decode().splitlines() if not ln.startswith("#")]
        median = statistics.median(times) * 1000
        print(f"/metrics: {len(body)} bytes, {len(lines)} samples")
        print(f"first scrape of a process (everything read): {cold * 1000:.0f} ms")
        print(
            f"scrape, a job ended since the previous one: median {median:.1f} ms "
            f"(min {min(times) * 1000:.1f}, max {max(times) * 1000:.1f}); "
            f"goal under 50 ms: {'met' if median < 50 else 'MISSED'}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
