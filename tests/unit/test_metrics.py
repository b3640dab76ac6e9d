"""``/metrics`` and ``/readyz`` read from a database with known content: instances received
and refused through the Receiver, jobs run through the Store's transitions (tests/pipeline_rows),
echo results, model states, QA comparisons and alerts."""

from __future__ import annotations

import time
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import insert
from sqlalchemy.exc import OperationalError

from gateway.config import GatewayConfig, StorageConfig
from gateway.db.database import Store
from gateway.db.records import DeliveryState, JobState
from gateway.db.tables import QaRow
from gateway.monitor.health import liveness, readiness
from gateway.monitor.metrics import MetricsExporter, render_metrics
from gateway.receive.receiver import Receiver
from gateway.receive.spool import Spool
from tests.conftest import mr_slice
from tests.pipeline_rows import ASSEMBLE_S, MODEL_SEGMENT_S, RECEIVE_S, SEND_S, run_job

T0 = 1_800_000_000.0
DELIVERED, PARKED = DeliveryState.DELIVERED, DeliveryState.FAILED
METRICS = (
    "instances_received_total",
    "associations_total",
    "jobs_total",
    "deliveries_total",
    "stage_duration_seconds",
    "queue_depth",
    "deliveries_open",
    "destination_up",
    "destination_echo_rtt_seconds",
    "destination_paused",
    "spool_free_bytes",
    "spool_min_free_bytes",
    "scp_listening",
    "model_warm",
    "qa_surface_dice",
    "qa_surface_dice_cases",
    "alerts_open",
)
PATIENT = {"PatientName": "Doe^Jane", "PatientID": "PID-4711", "PatientBirthDate": "19610203"}


class Live:
    def __init__(self, listening: bool = True) -> None:
        self.listening = listening

    def scp_listening(self) -> bool:
        return self.listening


def _model(name: str, label: str) -> dict[str, Any]:
    return {
        "name": name,
        "kind": "nnunet",
        "version": "1",
        "nnunet": {"folder": "nnunet"},
        "inputs": [{"name": "T2", "select": {"Modality": "^MR$"}}],
        "labels": {1: {"name": label, "color": [255, 255, 0]}},
    }


def make_config(tmp_path: Path, **overrides: Any) -> GatewayConfig:
    dest = {"ae_title": "TPS", "host": "127.0.0.1", "port": 104}
    rule = {"match": {"series": {"Modality": "^MR$"}}, "destinations": ["planning"]}
    return GatewayConfig.model_validate(
        {
            "destinations": {"planning": dest, "archive": dest | {"ae_title": "ARCHIVE"}},
            "paths": {"spool": tmp_path / "spool"},
            "storage": {"min_free_mb": 0},
            "rules": [
                rule | {"name": "pelvis-mr", "models": ["pelvis"]},
                rule
                | {"name": "prostate-mr", "models": ["taps"]}
                | {"destinations": ["planning", "archive"]},
            ],
            "models": {"pelvis": _model("pelvis", "Bladder"), "taps": _model("taps", "Prostate")},
        }
        | overrides
    )


def scrape(body: bytes, disk: bool = True) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Samples by (name, labels); ``disk=False`` leaves out free bytes (others write too)."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
        if disk or s.name != "aircon_spool_free_bytes"
    }


def value(samples: dict[Any, float], name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def receive(store: Store, tmp_path: Path) -> str:
    """One association storing three instances (patient data in them) and refusing one, one
    with no instances, one rejected. Returns the study's UID."""
    rx = Receiver(Spool(tmp_path / "spool"), store, storage=StorageConfig(min_free_mb=0))
    first = mr_slice(**PATIENT)
    study = first.StudyInstanceUID
    stored: dict[tuple[str, str], int] = {}
    for k in range(3):
        ds = first if k == 0 else mr_slice(**PATIENT, StudyInstanceUID=study)
        buf = BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        rec = rx.accept(ds, buf.getvalue(), "SCANNER", "AIRCON")
        stored[(rec.study_uid, rec.series_uid)] = stored.get((rec.study_uid, rec.series_uid), 0) + 1
    rx.association_ended("SCANNER", "127.0.0.1", stored, {"invalid or missing UIDs": 1}, tls=False)
    rx.association_ended("SCANNER", "127.0.0.1", {}, {}, tls=False)
    rx.audit_association("INTRUDER", "10.1.1.1", "rejected", "not an allowed peer")
    return str(study)


@pytest.fixture
def site(tmp_path: Path) -> tuple[GatewayConfig, Store, str]:
    cfg = make_config(tmp_path)
    store = Store(f"sqlite:///{tmp_path / 'aircon.db'}")
    study = receive(store, tmp_path)
    run_job(store, study, "pelvis-mr", ("pelvis",), {"planning": DELIVERED}, T0)
    run_job(
        store, "1.2.826.0.1.3680043.8.498.2", "pelvis-mr", ("pelvis",), {"planning": PARKED}, T0
    )
    both = {"planning": DELIVERED, "archive": DELIVERED}
    run_job(store, "1.2.826.0.1.3680043.8.498.3", "prostate-mr", ("taps",), both, T0)
    store.create_job("1.2.826.0.1.3680043.8.498.4", "pelvis-mr", ["pelvis"], now=T0)  # waiting
    queued = store.create_job("1.2.826.0.1.3680043.8.498.5", "pelvis-mr", ["pelvis"], now=T0)
    store.update_job(queued.id, state=JobState.QUEUED)
    store.record_echo("planning", True, T0, 12.5, "")
    store.record_echo("archive", False, T0, None, "connection refused")
    store.set_component("model:pelvis", "ok", T0)
    store.set_component("model:taps", "loading", T0)
    for kind in ("job_failed", "job_failed", "destination_down"):
        store.raise_alert(f"{kind}-{time.monotonic_ns()}", T0, kind=kind, message="job 2 failed")
    return cfg, store, study


def add_qa(store: Store, dices: list[float], superseded: bool = False, at: float = T0) -> None:
    rows = [
        {"job_id": 1, "study_uid": "1.2.3", "model": "pelvis", "model_version": "1"}
        | {"roi": "Bladder", "approved_roi": "Bladder", "status": "compared", "ai_uid": "1.2"}
        | {"approved_uid": f"1.3.{k}", "at": at + k, "surface_dice": d, "superseded": superseded}
        for k, d in enumerate(dices)
    ]
    with store.session() as s:
        s.execute(insert(QaRow), rows)


def test_counters_come_from_the_audit(site: tuple[GatewayConfig, Store, str]) -> None:
    cfg, store, _ = site
    body, content_type = render_metrics(cfg, store, Live())
    assert content_type.startswith("text/plain; version=0.0.4")
    got = scrape(body)
    assert value(got, "aircon_instances_received_total", status="stored") == 3
    assert value(got, "aircon_instances_received_total", status="refused") == 1
    for outcome in ("released", "no instances", "rejected"):
        assert value(got, "aircon_associations_total", outcome=outcome) == 1, outcome
    assert value(got, "aircon_jobs_total", rule="pelvis-mr", outcome="done") == 1
    assert value(got, "aircon_jobs_total", rule="pelvis-mr", outcome="failed") == 1
    assert value(got, "aircon_jobs_total", rule="prostate-mr", outcome="done") == 1
    assert value(got, "aircon_jobs_total", rule="prostate-mr", outcome="failed") is None
    assert value(got, "aircon_deliveries_total", destination="planning", outcome="delivered") == 2
    assert value(got, "aircon_deliveries_total", destination="planning", outcome="parked") == 1
    assert value(got, "aircon_deliveries_total", destination="archive", outcome="delivered") == 1


def test_gauges_say_what_is_now(site: tuple[GatewayConfig, Store, str]) -> None:
    cfg, store, _ = site
    got = scrape(render_metrics(cfg, store, Live(listening=False))[0])
    assert value(got, "aircon_queue_depth", state="waiting") == 1
    assert value(got, "aircon_queue_depth", state="queued") == 1
    assert value(got, "aircon_queue_depth", state="running") == 0
    assert value(got, "aircon_deliveries_open", destination="planning", state="failed") == 1
    assert value(got, "aircon_deliveries_open", destination="archive", state="pending") == 0
    assert value(got, "aircon_destination_up", destination="planning") == 1
    assert value(got, "aircon_destination_up", destination="archive") == 0
    assert value(got, "aircon_destination_echo_rtt_seconds", destination="planning") == 0.0125
    assert value(got, "aircon_destination_echo_rtt_seconds", destination="archive") is None
    assert value(got, "aircon_model_warm", model="pelvis") == 1
    assert value(got, "aircon_model_warm", model="taps") == 0
    assert value(got, "aircon_scp_listening") == 0
    assert value(got, "aircon_alerts_open", kind="job_failed") == 2
    assert value(got, "aircon_alerts_open", kind="destination_down") == 1
    assert (value(got, "aircon_spool_free_bytes") or 0) > 0


def test_stage_durations_are_histograms_by_stage_and_model(
    site: tuple[GatewayConfig, Store, str],
) -> None:
    cfg, store, _ = site
    got = scrape(render_metrics(cfg, store, Live())[0])
    hist = "aircon_stage_duration_seconds"
    # Three jobs ended; the parked one has no 'delivered' stage, so 'total' counts two.
    assert value(got, f"{hist}_count", stage="receive", model="") == 3
    assert value(got, f"{hist}_sum", stage="receive", model="") == pytest.approx(3 * RECEIVE_S)
    assert value(got, f"{hist}_count", stage="send", model="") == 2
    assert value(got, f"{hist}_sum", stage="send", model="") == pytest.approx(2 * SEND_S)
    total = ASSEMBLE_S + 0.5 + 1.5 + 7.0 + 0.3 + SEND_S  # 23.3 s
    assert value(got, f"{hist}_bucket", stage="total", model="", le="10.0") == 0
    assert value(got, f"{hist}_bucket", stage="total", model="", le="30.0") == 2
    assert value(got, f"{hist}_sum", stage="total", model="") == pytest.approx(2 * total)
    # Per model: pelvis ran in two jobs, taps in one; waiting apart from running.
    assert value(got, f"{hist}_count", stage="segment", model="pelvis") == 2
    assert value(got, f"{hist}_sum", stage="segment", model="taps") == MODEL_SEGMENT_S
    assert value(got, f"{hist}_bucket", stage="segment", model="pelvis", le="5.0") == 0
    assert value(got, f"{hist}_bucket", stage="segment", model="pelvis", le="10.0") == 2
    assert value(got, f"{hist}_bucket", stage="wait", model="taps", le="+Inf") == 1
    assert value(got, f"{hist}_count", stage="segment", model="") is None


def test_qa_surface_dice_is_the_mean_of_the_last_cases(
    site: tuple[GatewayConfig, Store, str],
) -> None:
    cfg, store, _ = site
    add_qa(store, [0.1] * 5)  # older cases, out of the window
    add_qa(store, [0.8, 1.0] * 10, at=T0 + 100)
    add_qa(store, [0.0], superseded=True, at=T0 + 200)  # a later answer replaced it
    got = scrape(render_metrics(cfg, store, Live())[0])
    labels = {"model": "pelvis", "version": "1", "roi": "Bladder"}
    assert value(got, "aircon_qa_surface_dice", **labels) == pytest.approx(0.9)
    assert value(got, "aircon_qa_surface_dice_cases", **labels) == 20


def test_every_metric_says_what_it_counts_and_carries_no_patient_data_or_uids(
    site: tuple[GatewayConfig, Store, str],
) -> None:
    cfg, store, study = site
    body = render_metrics(cfg, store, Live())[0].decode()
    helps = dict(
        line.removeprefix("# HELP ").split(" ", 1)
        for line in body.splitlines()
        if line.startswith("# HELP ")
    )
    assert set(helps) == {f"aircon_{name}" for name in METRICS}
    for name, text in helps.items():
        assert len(text) > 40, name
    for secret in (*PATIENT.values(), "Doe", "4711", study, "1.2.826.0.1.3680043.8.498"):
        assert secret not in body


def test_a_kept_exporter_reads_only_what_changed_and_agrees_with_a_fresh_read(
    site: tuple[GatewayConfig, Store, str],
) -> None:
    cfg, store, _ = site
    clock = [T0]
    exporter = MetricsExporter(cfg, store, Live(), clock=lambda: clock[0])
    exporter.render()
    clock[0] = time.time() + 3600  # every row so far is settled
    exporter.render()
    # More work after the last scrape: a job ends, and a done job is run again and ends again.
    run_job(store, "1.2.826.0.1.3680043.8.498.6", "prostate-mr", ("taps",), {"archive": PARKED}, T0)
    rerun = store.jobs_for("1.2.826.0.1.3680043.8.498.3", "prostate-mr")[0]
    store.update_job(rerun.id, state=JobState.QUEUED)
    assert store.claim_job(rerun.id, "test:1:y", now=T0 + 1000, lease_s=60)
    kept = scrape(exporter.render()[0], disk=False)
    assert kept == scrape(render_metrics(cfg, store, Live())[0], disk=False)
    assert value(kept, "aircon_queue_depth", state="running") == 1
    assert value(kept, "aircon_stage_duration_seconds_count", stage="segment", model="taps") == 1

    store.fail_job(rerun.id, "model crashed", now=T0 + 1010)
    kept = scrape(exporter.render()[0], disk=False)
    assert kept == scrape(render_metrics(cfg, store, Live())[0], disk=False)
    assert value(kept, "aircon_jobs_total", rule="prostate-mr", outcome="failed") == 2
    assert value(kept, "aircon_jobs_total", rule="prostate-mr", outcome="done") == 1
    # The rerun counts once, with what its row holds now: its whole-job stages of the last run
    # (no 'send': it failed), its models' times from the outcome it recorded (the first run's).
    assert value(kept, "aircon_stage_duration_seconds_count", stage="segment", model="taps") == 2
    assert value(kept, "aircon_stage_duration_seconds_count", stage="receive", model="") == 4
    assert value(kept, "aircon_stage_duration_seconds_count", stage="send", model="") == 1


# -- health --------------------------------------------------------------------------------------


def test_ready_when_every_check_passes_and_the_probe_really_writes(
    site: tuple[GatewayConfig, Store, str],
) -> None:
    cfg, store, _ = site
    store.set_component("model:taps", "ok", T0)
    before = time.time()
    ok, body = readiness(cfg, store, Live())
    assert ok and body["ready"] and body["not_ready"] == []
    assert set(body["checks"]) == {"database", "scp", "models", "disk"}
    assert all(c["ok"] and c["reason"] for c in body["checks"].values())
    assert store.components()["health"].updated_at >= before
    assert liveness() == {"alive": True}


def test_not_ready_names_each_failed_check_in_words(
    site: tuple[GatewayConfig, Store, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, store, _ = site
    cfg = make_config(tmp_path, storage={"min_free_mb": 1e12})  # more than any disk

    def read_only(*_args: Any, **_kwargs: Any) -> None:
        raise OperationalError("UPDATE components", {}, Exception("attempt to write a readonly"))

    monkeypatch.setattr(store, "set_component", read_only)
    ok, body = readiness(cfg, store, Live(listening=False))
    assert not ok and body["not_ready"] == ["database", "scp", "models", "disk"]
    checks = body["checks"]
    assert "attempt to write a readonly" in checks["database"]["reason"]
    assert checks["scp"]["reason"] == "the Storage SCP is not listening"
    assert checks["models"]["reason"] == "models not warm: taps: loading"
    assert "below" not in checks["disk"]["reason"] and "guard" in checks["disk"]["reason"]


def test_a_model_no_process_loaded_is_not_warm(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    store = Store(f"sqlite:///{tmp_path / 'aircon.db'}")
    store.set_component("model:taps", "failed", T0, detail="weights checksum mismatch")
    ok, body = readiness(cfg, store, Live())
    assert not ok and body["not_ready"] == ["models"]
    assert body["checks"]["models"]["reason"] == (
        "models not warm: pelvis: not loaded by any gateway process yet; "
        "taps: failed (weights checksum mismatch)"
    )
