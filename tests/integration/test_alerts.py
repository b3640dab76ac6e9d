"""Alerts reach real sinks through Apprise: an SMTP server (aiosmtpd) and a JSON webhook
receiver on loopback free ports. Sent once, re-sent after ``alerts.resend_minutes``, resolved
once; a sink that fails is retried; no message carries patient data."""

from __future__ import annotations

import email
import email.policy
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from gateway.config import GatewayConfig
from gateway.db.database import Store
from gateway.db.records import JobState
from gateway.demo.launcher import free_port
from gateway.monitor.alerts import AlertMonitor
from gateway.receive.receiver import Receiver
from gateway.receive.spool import Spool

T0 = 1_800_000_000.0
PATIENT = {"PatientName": "DOE^JANE", "PatientID": "PID4711X", "PatientBirthDate": "19450317"}


class Mailbox:
    """An SMTP server collecting (subject, plain text body, whole message)."""

    def __init__(self) -> None:
        self.mails: list[tuple[str, str, str]] = []
        self.controller = Controller(self, hostname="127.0.0.1", port=free_port())

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        body = msg.get_body(preferencelist=("plain",))
        text = body.get_content() if body is not None else ""
        self.mails.append((str(msg["Subject"]), text, envelope.content.decode("utf-8", "replace")))
        return "250 OK"

    @property
    def url(self) -> str:
        # Plain SMTP (no TLS, no login) on a custom port: mailto://, host:port, from= and to=.
        c = self.controller
        return f"mailto://{c.hostname}:{c.port}?from=aircon@example.org&to=oncall@example.org"

    @property
    def subjects(self) -> list[str]:
        return [m[0] for m in self.mails]


class Webhook:
    """A JSON webhook receiver (Apprise's json:// posts title, message and type)."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.posts: list[dict[str, Any]] = []
        self.server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"json://127.0.0.1:{self.port}/hook"

    def start(self) -> None:
        posts = self.posts

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                n = int(self.headers.get("Content-Length", 0))
                posts.append(json.loads(self.rfile.read(n)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    @property
    def titles(self) -> list[str]:
        return [p["title"] for p in self.posts]


@pytest.fixture
def mailbox() -> Iterator[Mailbox]:
    box = Mailbox()
    box.controller.start()
    yield box
    box.controller.stop()


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    yield hook
    hook.stop()


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now

    def at_minute(self, minutes: float) -> None:
        self.now = T0 + minutes * 60.0


def make(tmp_path: Path, sinks: list[str], **alerts: Any) -> tuple[GatewayConfig, Store]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    cfg = GatewayConfig.model_validate(
        {
            "destinations": {"planning": {"ae_title": "TPS", "host": "127.0.0.1", "port": 11112}},
            "paths": {"spool": str(tmp_path / "spool")},
            "storage": {"min_free_mb": 0},
            "database": {"url": f"sqlite:///{tmp_path / 'db.sqlite'}"},
            "alerts": {"sinks": sinks, "resend_minutes": 1, **alerts},
        }
    )
    return cfg, Store(cfg.database.url)


def test_destination_down_is_sent_once_resent_after_the_interval_then_resolved_once(
    tmp_path: Path, mailbox: Mailbox, webhook: Webhook
) -> None:
    webhook.start()
    cfg, store = make(tmp_path, [mailbox.url, webhook.url])
    clock = Clock()
    monitor = AlertMonitor(cfg, store, clock=clock)
    store.record_echo("planning", False, T0, None, "connection refused")

    clock.at_minute(4)  # down, but not yet destination_down_minutes (5)
    assert monitor.check() == []
    clock.at_minute(6)
    monitor.check()
    firing = "[AIRCON FIRING] destination planning down for 6 min"
    assert mailbox.subjects == [firing] and webhook.titles == [firing]
    assert "connection refused" in mailbox.mails[0][1]
    assert webhook.posts[0]["type"] == "failure"

    clock.at_minute(6.5)  # within resend_minutes: nothing new
    monitor.check()
    assert len(mailbox.mails) == len(webhook.posts) == 1

    clock.at_minute(7.1)  # a reminder
    monitor.check()
    reminder = "[AIRCON FIRING] destination planning down for 7 min"
    assert mailbox.subjects == [firing, reminder] and webhook.titles == [firing, reminder]

    store.record_echo("planning", True, T0 + 7.5 * 60, 3.0, "")
    clock.at_minute(8)
    monitor.check()
    monitor.check()
    resolved = "[AIRCON RESOLVED] destination planning down"
    assert mailbox.subjects == [firing, reminder, resolved]
    assert webhook.titles == [firing, reminder, resolved]
    assert webhook.posts[-1]["type"] == "success"
    (row,) = store.alerts()
    assert (row.state, row.notified_count, row.resolved_notified) == ("resolved", 2, True)
    outcomes = [a["outcome"] for a in store.audit_rows() if a["event"] == "alert"]
    assert outcomes == ["opened", "sent", "resent", "resolved", "resolved sent"]

    # Down again later: a new occurrence, a new alert.
    store.record_echo("planning", False, T0 + 20 * 60, None, "timeout")
    clock.at_minute(26)
    monitor.check()
    assert mailbox.subjects[-1] == firing
    assert sorted(a.key for a in store.alerts()) == [
        "destination_down:planning#1",
        "destination_down:planning#2",
    ]


def test_acknowledged_alert_is_not_reminded_but_its_end_is_sent(
    tmp_path: Path, mailbox: Mailbox
) -> None:
    cfg, store = make(tmp_path, [mailbox.url])
    clock = Clock()
    monitor = AlertMonitor(cfg, store, clock=clock)
    job = store.create_job("1.2.826.0.1.1", "prostate-mr", ["taps"], T0)
    store.fail_job(job.id, "model taps: CUDA out of memory", T0)
    monitor.check()
    (row,) = store.alerts()
    store.acknowledge_alert(row.id, "physicist", T0 + 30)
    clock.at_minute(5)
    monitor.check()
    assert mailbox.subjects == [f"[AIRCON FIRING] job {job.id} failed (rule prostate-mr)"]
    store.update_job(job.id, state=JobState.QUEUED, reason="resend requested")
    monitor.check()
    assert mailbox.subjects[-1] == f"[AIRCON RESOLVED] job {job.id} failed (rule prostate-mr)"
    assert len(mailbox.mails) == 2


def test_a_failing_sink_is_retried_at_the_next_check(tmp_path: Path, mailbox: Mailbox) -> None:
    down = Webhook()  # nothing listens on its port yet
    cfg, store = make(tmp_path, [down.url])
    monitor = AlertMonitor(cfg, store, clock=Clock())
    job = store.create_job("1.2.826.0.1.1", "prostate-mr", ["taps"], T0)
    store.fail_job(job.id, "no series matched the primary channel", T0)
    monitor.check()
    (row,) = store.alerts()
    assert row.notified_count == 0  # no sink took it: not counted as sent
    down.start()
    try:
        monitor.check()
        monitor.check()
        assert down.titles == [f"[AIRCON FIRING] job {job.id} failed (rule prostate-mr)"]
    finally:
        down.stop()

    # Two sinks, one down: the mail goes once, the webhook is retried alone.
    later = Webhook()
    cfg, store = make(tmp_path / "two", [mailbox.url, later.url])
    monitor = AlertMonitor(cfg, store, clock=Clock())
    job = store.create_job("1.2.826.0.1.2", "prostate-mr", ["taps"], T0)
    store.fail_job(job.id, "model taps: weights hash changed", T0)
    monitor.check()
    assert len(mailbox.mails) == 1 and store.alerts()[0].notified_count == 1
    later.start()
    try:
        monitor.check()
        assert len(mailbox.mails) == 1 and len(later.posts) == 1
    finally:
        later.stop()


def _received_study(store: Store, tmp_path: Path) -> str:
    """A study received the way the SCP receives it, from a DICOM file with patient data."""
    ds = Dataset()
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "MR"
    ds.SeriesDescription = "t2_tse_tra"
    for keyword, value in PATIENT.items():
        setattr(ds, keyword, value)
    ds.ImagePositionPatient = [0, 0, 0]
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.SamplesPerPixel = 2, 3, 16, 1
    ds.PixelData = bytes(2 * 3 * 2)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    Receiver(Spool(tmp_path / "spool"), store).accept(ds, buf.getvalue(), "SCANNER", "AIRCON")
    return str(ds.StudyInstanceUID)


def test_no_alert_message_carries_patient_data(
    tmp_path: Path, mailbox: Mailbox, webhook: Webhook
) -> None:
    webhook.start()
    cfg, store = make(
        tmp_path,
        [mailbox.url, webhook.url],
        conditions={"queue_backlog": 1, "destination_down_minutes": 1},
    )
    cfg = cfg.model_copy(update={"storage": cfg.storage.model_copy(update={"min_free_mb": 1e12})})
    study = _received_study(store, tmp_path)
    failed = store.create_job(study, "prostate-mr", ["taps"], T0)
    store.fail_job(failed.id, "model taps produced an empty Prostate", T0)
    parked = store.create_job(study, "pelvis", ["pelvis-demo"], T0)
    (delivery,) = store.create_deliveries(parked.id, ["planning"])
    store.update_delivery(
        delivery, state="failed", attempts=8, last_status="0xA700 out of resources"
    )
    store.fail_job(parked.id, "delivery to planning parked", T0)
    for rule in ("a", "b"):
        queued = store.create_job(study, rule, ["taps"], T0)
        store.update_job(queued.id, state=JobState.QUEUED, reason="")
    store.record_echo("planning", False, T0, None, "association rejected")
    store.set_component("model:taps", "failed", T0, detail="weights file missing")
    store.raise_alert(
        "drift:taps:1.0:Prostate:surface_dice",
        T0,
        kind="drift",
        model="taps",
        model_version="1.0",
        roi="Prostate",
        message="taps 1.0 Prostate: surface Dice EWMA below its lower limit since job 3",
    )
    store.add_incident(
        T0,
        key="candidate:1",
        state="candidate",
        title="Prostate Dice 0.31 below 0.5",
        job_id=failed.id,
        study_uid=study,
        model="taps",
        model_version="1.0",
        roi="Prostate",
        opened_by="aircon",
    )
    clock = Clock()
    clock.at_minute(3)
    monitor = AlertMonitor(cfg, store, clock=clock)
    active = monitor.check()
    kinds = sorted({c.kind.value for c in active})
    assert kinds == [
        "delivery_parked",
        "destination_down",
        "disk_guard",
        "drift",
        "incident_candidate",
        "job_failed",
        "model_load_failed",
        "queue_backlog",
    ]
    store.update_job(failed.id, state=JobState.QUEUED, reason="resend requested")
    clock.at_minute(3.5)
    monitor.check()  # job_failed resolved: its "resolved" message is checked too
    assert len(mailbox.mails) == len(webhook.posts) == len(active) + 1
    messages = [m[2] + m[1] for m in mailbox.mails] + [json.dumps(p) for p in webhook.posts]
    assert any(study in m for m in messages)  # the study is named by its UID
    for m in messages:
        for value in (*PATIENT.values(), "DOE", "JANE", "1945"):
            assert value not in m


def test_two_processes_on_one_database_send_an_alert_once(tmp_path: Path, mailbox: Mailbox) -> None:
    cfg, store = make(tmp_path, [mailbox.url])
    other = Store(cfg.database.url)  # a second process's connection to the same database
    job = store.create_job("1.2.826.0.1.1", "prostate-mr", ["taps"], T0)
    store.fail_job(job.id, "model taps: CUDA out of memory", T0)
    subject = f"job_failed:{job.id}"
    row = store.open_alert(subject, T0, kind="job_failed", message=f"job {job.id} failed")
    assert row is not None and other.open_alert(subject, T0, kind="job_failed") is None
    # Both read it as due before either sent it: the conditional claim lets one through.
    assert store.claim_alert_send(row.id, None, T0) is True
    assert other.claim_alert_send(row.id, None, T0) is False
    store.release_alert_send(row.id, None, T0)  # the winner's sinks all failed: sent next check
    clock = Clock()
    first, second = AlertMonitor(cfg, store, clock=clock), AlertMonitor(cfg, other, clock=clock)
    for monitor in (first, second, first, second):
        monitor.check()
    clock.at_minute(0.5)
    first.check()
    second.check()
    assert mailbox.subjects == [f"[AIRCON FIRING] job {job.id} failed (rule prostate-mr)"]
    assert [a.key for a in store.alerts()] == [f"{subject}#1"]
