"""The console's QA, Models and Peers pages against a temporary database with known rows: what a
viewer sees, the chart and the report, and the incident register's actions (operator only,
CSRF-checked, audited as the CLI's ``aircon incident`` audits them)."""

from __future__ import annotations

import dataclasses
import functools
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from starlette.testclient import TestClient

from gateway.cli import main
from gateway.config import parse_config
from gateway.console.app import create_app
from gateway.console.security import Passwords
from gateway.db.database import Store
from gateway.db.records import QaRecord
from gateway.db.tables import AuditRow, JobRow, QaRow
from gateway.qa import summary
from tests.unit.test_config import PELVIS_LABELS, make_model
from tests.unit.test_qa_drift import simulated_clinic

PASSWORD = "correct horse battery"
MODEL, VERSION = "pelvis-demo", "0.1"
HOUR = 3600.0


@functools.cache
def password_hash() -> str:
    return Passwords().hash(PASSWORD)  # argon2: slow on purpose, made once


class Ops:
    def scp_listening(self) -> bool:
        return True


@dataclasses.dataclass
class Site:
    store: Store
    app: Any
    records: list[QaRecord]
    candidate: int
    config: Path


def _records(now: float) -> list[QaRecord]:
    """30 prostate and bladder cases in the last 30 hours; the last 10 prostates drift."""
    return [
        dataclasses.replace(r, model=MODEL, model_version=VERSION, at=now - (31 - r.job_id) * HOUR)
        for r in simulated_clinic()
    ]


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    make_model(tmp_path / "models", spec={"labels": PELVIS_LABELS})
    raw = {
        "database": {"url": f"sqlite:///{tmp_path / 'db.sqlite'}"},
        "peers": [
            {"ae_title": "TPS", "host": "10.0.0.5"},
            {"ae_title": "SCANNER", "require_tls": True},
        ],
        "qa": {"peers": ["TPS"]},
        "destinations": {"tps": {"ae_title": "TPSD", "host": "127.0.0.1", "port": 11112}},
        "rules": [{"name": "pelvis-mr", "models": [MODEL], "destinations": ["tps"]}],
    }
    cfg = parse_config(raw, tmp_path)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(raw))
    store = Store(cfg.database.url)
    for name, role in (("vera", "viewer"), ("otto", "operator")):
        store.add_user(name, role, password_hash(), time.time())
    now = time.time()
    records = _records(now)
    with store.session() as s:
        for r in records:
            values = {f.name: getattr(r, f.name) for f in dataclasses.fields(r) if f.name != "id"}
            s.add(QaRow(**{**values, "status": r.status.value}))
        for i, seconds in enumerate((10.0, 20.0, 30.0, 40.0)):
            outcome = {
                "models": {
                    MODEL: {
                        "state": "done",
                        "segment_s": seconds,
                        "provenance": {"model_name": MODEL, "model_version": VERSION},
                    }
                }
            }
            s.add(
                JobRow(
                    study_uid=f"1.2.826.0.1.7.{i % 3}",  # 4 jobs, 3 studies
                    rule="pelvis-mr",
                    models=[MODEL],
                    state="done",
                    created_at=now - HOUR,
                    outcome=outcome,
                )
            )
        s.add(
            JobRow(
                study_uid="1.2.826.0.1.7.9",
                rule="pelvis-mr",
                models=[MODEL],
                state="failed",
                created_at=now,
                outcome={"models": {MODEL: {"state": "failed", "reason": "out of memory"}}},
            )
        )
    store.set_component(f"model:{MODEL}", "ok", now, detail="loaded on cuda:0, warm")
    store.audit(
        "association",
        "rejected",
        now - 60,
        calling_ae="INTRUDER",
        address="10.9.9.9",
        detail="not an allowed peer",
    )
    store.audit(
        "association",
        "rejected",
        now - 30,
        calling_ae="",
        address="10.9.9.8",
        detail="TLS handshake: certificate unknown",
    )
    store.audit(
        "received",
        "stored",
        now - 120,
        calling_ae="TPS",
        address="10.0.0.5",
        study_uid="1.2.826.0.1.7.0",
        instances=3,
        detail="TCP",
    )
    candidate = store.add_incident(
        now,
        key="k-rectum",
        state="candidate",
        title="Rectum deleted by the clinician",
        job_id=7,
        model=MODEL,
        model_version=VERSION,
        roi="Rectum",
        opened_by="aircon",
    )
    store.raise_alert(
        "drift-1",
        now,
        kind="drift",
        model=MODEL,
        model_version=VERSION,
        roi="Prostate",
        message="Prostate (pelvis-demo 0.1): drift from case 21",
    )
    assert candidate is not None
    yield Site(store, create_app(cfg, store, Ops()), records, candidate, tmp_path / "config.yaml")  # type: ignore[arg-type]


def login(app: Any, name: str) -> tuple[TestClient, str]:
    client = TestClient(app)
    token = re.search(r'name="csrf" value="([^"]+)"', client.get("/login").text)[1]  # type: ignore[index]
    r = client.post(
        "/login",
        data={"csrf": token, "username": name, "password": PASSWORD, "next": "/qa"},
        follow_redirects=False,
    )
    assert r.status_code == 303, r.text
    page = client.get("/qa")
    return client, re.search(r'name="csrf" value="([^"]+)"', page.text)[1]  # type: ignore[index]


def test_qa_page_shows_each_roi_its_statistics_drift_and_the_register(site: Site) -> None:
    client, _ = login(site.app, "vera")
    r = client.get("/qa")
    assert r.status_code == 200
    stats = summary.summarize(site.records, now=time.time(), window_days=30)
    prostate = next(x for x in stats["rois"] if x["roi"] == "Prostate" and x["window"] == "all")
    row = re.search(r'<tr data-roi="pelvis-demo/0.1/Prostate/all">(.*?)</tr>', r.text, re.S)
    assert row is not None
    assert '<td class="num">30</td>' in row[1]  # cases
    assert f"{prostate['dice']['median']:.3f}" in row[1]
    assert f"{prostate['surface_dice']['median']:.3f}" in row[1]
    assert f"{prostate['unchanged_pct']:.0f} %" in row[1]
    assert "out of control" in row[1]
    bladder = re.search(r'<tr data-roi="pelvis-demo/0.1/Bladder/all">(.*?)</tr>', r.text, re.S)
    assert bladder is not None and "in control" in bladder[1] and "out of" not in bladder[1]
    # The charts' limits and images, the candidate, the alarm, the report link.
    assert "first 20 cases" in r.text
    assert "/qa/chart.png?model=pelvis-demo&amp;version=0.1&amp;roi=Prostate" in r.text
    assert "Rectum deleted by the clinician" in r.text
    assert "drift from case 21" in r.text
    assert 'href="/qa/report.html?since=30d"' in r.text
    # A viewer sees no action buttons.
    assert "/qa/incidents/" not in r.text and "/acknowledge" not in r.text


def test_operator_sees_the_actions(site: Site) -> None:
    client, _ = login(site.app, "otto")
    text = client.get("/qa").text
    assert f'action="/qa/incidents/{site.candidate}/accept"' in text
    assert f'action="/qa/incidents/{site.candidate}/dismiss"' in text
    assert 'action="/alerts/1/acknowledge"' in text
    assert 'action="/qa/incidents"' in text


def test_chart_is_a_png_and_unknown_keys_are_404(site: Site) -> None:
    client, _ = login(site.app, "vera")
    r = client.get("/qa/chart.png", params={"model": MODEL, "version": VERSION, "roi": "Prostate"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.content[:8] == b"\x89PNG\r\n\x1a\n"
    for params in (
        {"model": MODEL, "version": VERSION, "roi": "Heart"},
        {"model": MODEL, "version": "9.9", "roi": "Prostate"},
        {"model": "../etc", "version": VERSION, "roi": "Prostate"},
        {},
    ):
        assert client.get("/qa/chart.png", params=params).status_code == 404


def test_report_downloads_as_html_with_the_roi_rows(site: Site) -> None:
    client, _ = login(site.app, "vera")
    r = client.get("/qa/report.html", params={"since": "30d"})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert r.headers["content-disposition"].startswith("attachment;")
    assert "<html" in r.text.lower()
    for roi in ("Prostate", "Bladder"):
        assert roi in r.text
    assert "data:image/png;base64" in r.text  # the control charts, inline
    assert client.get("/qa/report.html", params={"since": "soon"}).status_code == 400


def _audit(store: Store, event: str) -> list[AuditRow]:
    rows, _ = store.audit_page(event=event, limit=None)
    return rows


def test_operator_accepts_edits_and_closes_a_candidate(site: Site) -> None:
    client, csrf = login(site.app, "otto")
    base = f"/qa/incidents/{site.candidate}"
    r = client.post(f"{base}/accept", data={"csrf": csrf, "severity": "high"})
    assert r.status_code == 200 and f"Incident {site.candidate} accepted." in r.text
    row = site.store.incident(site.candidate)
    assert row is not None and row.state == "open" and row.severity == "high"
    assert row.decided_by == "otto"

    client.post(
        f"{base}/edit",
        data={
            "csrf": csrf,
            "description": "ROI removed: wrong anatomy",
            "actions": "retrain",
            "severity": "medium",
        },
    )
    row = site.store.incident(site.candidate)
    assert row is not None and (row.description, row.actions, row.severity) == (
        "ROI removed: wrong anatomy",
        "retrain",
        "medium",
    )

    r = client.post(f"{base}/close", data={"csrf": csrf, "actions": ""})
    assert site.store.incident(site.candidate).state == "open"  # type: ignore[union-attr]
    client.post(f"{base}/close", data={"csrf": csrf, "actions": "model 0.2 deployed"})
    row = site.store.incident(site.candidate)
    assert row is not None and row.state == "closed" and row.closed_by == "otto"
    assert row.actions == "model 0.2 deployed"

    # The register's own rows (as `aircon incident` writes them) and the console's action rows.
    outcomes = [a.outcome for a in _audit(site.store, "incident")]
    assert {"accepted", "edited", "closed"} <= set(outcomes)
    assert all(
        "by otto" in a.detail
        for a in _audit(site.store, "incident")
        if a.outcome in ("accepted", "edited", "closed")
    )
    actions = {a.outcome for a in _audit(site.store, "action")}
    assert {"incident accepted", "incident edited", "incident closed"} <= actions


def test_operator_dismisses_a_candidate_with_a_reason(site: Site) -> None:
    client, csrf = login(site.app, "otto")
    base = f"/qa/incidents/{site.candidate}"
    client.post(f"{base}/dismiss", data={"csrf": csrf, "reason": ""})
    assert site.store.incident(site.candidate).state == "candidate"  # type: ignore[union-attr]
    client.post(f"{base}/dismiss", data={"csrf": csrf, "reason": "planned partial resection"})
    row = site.store.incident(site.candidate)
    assert row is not None and row.state == "dismissed"
    assert row.actions == "dismissed: planned partial resection"
    assert "dismissed" in {a.outcome for a in _audit(site.store, "incident")}
    assert "incident dismissed" in {a.outcome for a in _audit(site.store, "action")}
    # A dismissed candidate cannot be accepted any more: refused, nothing changes.
    r = client.post(f"{base}/accept", data={"csrf": csrf})
    assert "cannot be open" in r.text
    assert site.store.incident(site.candidate).state == "dismissed"  # type: ignore[union-attr]


def test_operator_opens_an_incident(site: Site) -> None:
    client, csrf = login(site.app, "otto")
    r = client.post(
        "/qa/incidents",
        data={
            "csrf": csrf,
            "severity": "low",
            "title": "Bladder too small",
            "description": "Bladder contour misses the dome",
            "job_id": "",
        },
    )
    assert r.status_code == 200
    opened = [i for i in site.store.incidents(state="open") if i.title == "Bladder too small"]
    assert len(opened) == 1 and opened[0].opened_by == "otto" and opened[0].severity == "low"
    assert "opened" in {a.outcome for a in _audit(site.store, "incident")}
    assert "incident opened" in {a.outcome for a in _audit(site.store, "action")}
    # With a job: the study and the models that ran come from it.
    client.post(
        "/qa/incidents",
        data={"csrf": csrf, "severity": "medium", "description": "second look", "job_id": "1"},
    )
    row = next(i for i in site.store.incidents() if i.description == "second look")
    assert (row.job_id, row.study_uid, row.model, row.model_version) == (
        1,
        "1.2.826.0.1.7.0",
        MODEL,
        VERSION,
    )
    # An unknown job, a bad severity: refused with a message, nothing registered.
    before = len(site.store.incidents())
    r = client.post(
        "/qa/incidents", data={"csrf": csrf, "severity": "low", "description": "x", "job_id": "999"}
    )
    assert "No job 999" in r.text
    client.post("/qa/incidents", data={"csrf": csrf, "severity": "huge", "description": "x"})
    assert len(site.store.incidents()) == before


ACTIONS = [
    "/qa/incidents",
    "/qa/incidents/{id}/accept",
    "/qa/incidents/{id}/dismiss",
    "/qa/incidents/{id}/close",
    "/qa/incidents/{id}/edit",
]


def test_a_viewer_gets_403_on_every_incident_action(site: Site) -> None:
    client, csrf = login(site.app, "vera")
    form = {"csrf": csrf, "severity": "low", "description": "d", "reason": "r", "actions": "a"}
    for path in ACTIONS:
        r = client.post(path.format(id=site.candidate), data=form)
        assert r.status_code == 403, path
    assert site.store.incident(site.candidate).state == "candidate"  # type: ignore[union-attr]
    assert len(site.store.incidents()) == 1
    refused = [a for a in _audit(site.store, "action") if a.outcome == "refused: role"]
    assert len(refused) == len(ACTIONS) and all("vera" in a.detail for a in refused)


def test_an_action_without_the_csrf_token_is_refused(site: Site) -> None:
    client, _ = login(site.app, "otto")
    form = {"severity": "low", "description": "d", "reason": "r", "actions": "a"}
    for path in ACTIONS:
        for sent in (form, {**form, "csrf": "x" * 43}):
            r = client.post(path.format(id=site.candidate), data=sent)
            assert r.status_code == 403, path
    assert site.store.incident(site.candidate).state == "candidate"  # type: ignore[union-attr]
    assert len(site.store.incidents()) == 1
    refused = [a for a in _audit(site.store, "action") if a.outcome == "refused: csrf"]
    assert len(refused) == 2 * len(ACTIONS)


def test_models_page_shows_each_model_its_warmth_usage_and_rules(site: Site) -> None:
    client, _ = login(site.app, "vera")
    r = client.get("/models")
    assert r.status_code == 200
    spec = next(iter(parse_config_models(site)))
    section = re.search(
        r'<section class="card model" id="model-pelvis-demo">(.*?)</section>', r.text, re.S
    )
    assert section is not None
    text = section[1]
    assert "version 0.1" in text and spec.weights_sha256 in text and len(spec.weights_sha256) == 64
    assert "T2" in text and "1 → Prostate" in text and "3 → Rectum" in text
    assert "s-warm" in text and "loaded on cuda:0, warm" in text
    assert '<td class="studies">3' in text and "failed in 1 job" in text
    # segment_s 10, 20, 30, 40: median 25.0, 90th percentile 37.0
    assert "median 25.0 s" in text and "90th percentile 37.0 s" in text and "(last 4 runs)" in text
    assert "pelvis-mr" in text


def parse_config_models(site: Site) -> Any:
    return site.app.state.console.cfg.models.values()


def test_a_model_without_a_component_row_is_unknown(site: Site) -> None:
    with site.store.session() as s:
        from gateway.db.tables import ComponentRow

        s.query(ComponentRow).delete()
    client, _ = login(site.app, "vera")
    assert "s-unknown" in client.get("/models").text


def test_peers_page_shows_allowed_senders_last_association_and_rejections(site: Site) -> None:
    client, _ = login(site.app, "vera")
    r = client.get("/peers")
    assert r.status_code == 200
    tps = re.search(r'<tr data-peer="TPS">(.*?)</tr>', r.text, re.S)
    scanner = re.search(r'<tr data-peer="SCANNER">(.*?)</tr>', r.text, re.S)
    assert tps is not None and scanner is not None
    assert "10.0.0.5" in tps[1] and "yes" in tps[1] and "never" not in tps[1]
    assert "required" in scanner[1] and "any" in scanner[1] and "never" in scanner[1]
    rejected = re.search(r'<table id="rejected">(.*?)</table>', r.text, re.S)
    assert rejected is not None
    assert "INTRUDER" in rejected[1] and "10.9.9.9" in rejected[1]
    assert "not an allowed peer" in rejected[1]
    assert "TLS handshake: certificate unknown" in rejected[1] and "10.9.9.8" in rejected[1]
    # A rejected association is not the peer's last association.
    assert "INTRUDER" not in r.text.split('<table id="rejected">')[0]


def test_pages_need_a_session(site: Site) -> None:
    client = TestClient(site.app)
    for path in ("/qa", "/models", "/peers", "/qa/chart.png", "/qa/report.html"):
        r = client.get(path, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].startswith("/login")


def test_the_console_registers_incidents_as_the_cli_does(site: Site, tmp_path: Path) -> None:
    """One implementation (gateway.qa.service) behind `aircon incident` and the QA page: the
    same incident and the same register audit row, only who did it differs."""
    assert (
        main(
            [
                "-c",
                str(site.config),
                "incident",
                "open",
                "--job",
                "1",
                "--severity",
                "low",
                "--description",
                "apex missed",
                "--by",
                "cli-user",
            ]
        )
        == 0
    )
    client, csrf = login(site.app, "otto")
    client.post(
        "/qa/incidents",
        data={"csrf": csrf, "severity": "low", "description": "apex missed", "job_id": "1"},
    )
    by_cli, by_console = sorted(
        (i for i in site.store.incidents() if i.description == "apex missed"), key=lambda i: i.id
    )
    fields = ("state", "severity", "title", "job_id", "study_uid", "model", "model_version")
    assert [getattr(by_cli, f) for f in fields] == [getattr(by_console, f) for f in fields]
    assert (by_cli.opened_by, by_console.opened_by) == ("cli-user", "otto")
    opened = [a for a in _audit(site.store, "incident") if a.outcome == "opened"]
    assert sorted(a.detail.split(" - by ")[1] for a in opened) == ["cli-user", "otto"]
    assert len({(a.study_uid, a.job_id, a.model) for a in opened}) == 1

    assert (
        main(
            [
                "-c",
                str(site.config),
                "incident",
                "close",
                str(by_cli.id),
                "--by",
                "cli-user",
                "--actions",
                "reviewed",
            ]
        )
        == 0
    )
    client.post(f"/qa/incidents/{by_console.id}/close", data={"csrf": csrf, "actions": "reviewed"})
    closed = [site.store.incident(i.id) for i in (by_cli, by_console)]
    assert [(c.state, c.actions) for c in closed if c] == [("closed", "reviewed")] * 2

    out = tmp_path / "cli-report"
    assert main(["-c", str(site.config), "qa", "report", "--since", "2d", "--out", str(out)]) == 0
    html = next(out.glob("*.html")).read_text()
    assert "Prostate" in html and "Bladder" in html
