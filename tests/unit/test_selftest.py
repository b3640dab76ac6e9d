"""The self-test's pieces without a network: where a self-test's job delivers, a self-test that
cannot send, and the console page (a real app through Starlette's TestClient)."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from gateway.config import GatewayConfig, parse_config
from gateway.console.app import create_app
from gateway.console.security import Passwords
from gateway.db.database import Store
from gateway.db.records import JobState
from gateway.job import JobOutcome
from gateway.monitor import selftest

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "correct horse battery"


def _cfg(tmp_path: Path, **sections: Any) -> GatewayConfig:
    raw = {
        "paths": {"models": str(REPO / "models")},
        "database": {"url": f"sqlite:///{tmp_path / 'aircon.db'}"},
        "destinations": {
            "planning": {"ae_title": "PLANNING", "host": "127.0.0.1", "port": 4242},
            "archive": {"ae_title": "ARCHIVE", "host": "127.0.0.1", "port": 4243},
        },
        "peers": [{"ae_title": "AIRCON"}],
        **sections,
    }
    return parse_config(raw, tmp_path)


def _finished(store: Store, study_uid: str) -> tuple[int, list[int]]:
    """A job of ``study_uid`` whose rule delivers to 'planning', its RTSTRUCT just built."""
    job = store.create_job(study_uid, "r", ["pelvis-demo"], 1.0)
    ids = store.finish_run(job.id, JobOutcome(), "1.2.3.4", "/nowhere.dcm", ["planning"], 2.0)
    return job.id, ids


def test_self_test_delivers_only_to_its_destination_and_a_dry_run_nowhere(db: Store) -> None:
    plain_job, plain = _finished(db, "1.2.826.0.1.1")
    db.add_self_test("1.2.826.0.1.2", "archive", "olivia", 1.0)
    test_job, to_archive = _finished(db, "1.2.826.0.1.2")
    db.add_self_test("1.2.826.0.1.3", "", "olivia", 1.0)
    dry_job, dry = _finished(db, "1.2.826.0.1.3")

    assert [db.delivery(i).destination for i in plain] == ["planning"]  # type: ignore[union-attr]
    assert [d.destination for d in db.deliveries_for(test_job)] == ["archive"]
    assert len(to_archive) == 1
    assert dry == [] and db.deliveries_for(dry_job) == []
    job = db.job(dry_job)
    assert job is not None
    assert (job.state, job.reason) == (JobState.DONE.value, "dry run: not sent")
    assert db.job(test_job).state == JobState.DELIVERING.value  # type: ignore[union-attr]
    assert db.job(plain_job).state == JobState.DELIVERING.value  # type: ignore[union-attr]


def test_not_a_peer_fails_at_once_with_the_reason_and_is_audited(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, peers=[{"ae_title": "SCANNER"}])
    store = Store(cfg.database.url)
    test_id = selftest.start(cfg, store, "", "olivia")
    row = store.self_test(test_id)
    assert row is not None and row.state == "failed"
    assert "AIRCON is not among the peers" in row.detail
    audit = [r for r in store.audit_rows() if r["event"] == "selftest"]
    assert [r["outcome"] for r in audit] == ["started", "failed"]
    assert audit[0]["study_uid"] == row.study_uid
    assert row.study_uid.startswith(cfg.rtstruct.uid_root)
    with pytest.raises(ValueError, match="unknown destination"):
        selftest.start(cfg, store, "nowhere", "olivia")


def test_phantom_has_fresh_uids_under_our_root(tmp_path: Path) -> None:
    from pydicom import dcmread

    root = "1.2.826.0.1.3680043.10.999."
    a = selftest.write_phantom(tmp_path / "a", root + "1", root)
    b = selftest.write_phantom(tmp_path / "b", root + "2", root)
    ds_a = [dcmread(f, stop_before_pixels=True) for f in a]
    ds_b = [dcmread(f, stop_before_pixels=True) for f in b]
    assert {str(d.StudyInstanceUID) for d in ds_a} == {root + "1"}
    assert len({str(d.SeriesInstanceUID) for d in ds_a}) == 4
    uids_a = {str(d.SOPInstanceUID) for d in ds_a}
    assert len(uids_a) == len(a) and all(u.startswith(root) for u in uids_a)
    assert not uids_a & {str(d.SOPInstanceUID) for d in ds_b}
    assert all(str(d.file_meta.MediaStorageSOPInstanceUID) == str(d.SOPInstanceUID) for d in ds_a)


def test_stale_self_tests_fail_as_interrupted(db: Store) -> None:
    test_id = db.add_self_test("1.2.826.0.1.9", "", "olivia", time.time() - 5)
    assert selftest.recover(db) == [test_id]
    row = db.self_test(test_id)
    assert row is not None and row.state == "failed" and "interrupted" in row.detail
    assert db.finish_self_test(test_id, True, "late", time.time()) is False


class Ops:
    def __init__(self, store: Store):
        self.store = store
        self.calls: list[tuple[str, str]] = []

    def self_test(self, destination: str, by: str) -> int:
        self.calls.append((destination, by))
        return self.store.add_self_test(f"1.2.826.0.1.{len(self.calls)}", destination, by, 1.0)

    def scp_listening(self) -> bool:
        return True


def _client(cfg: GatewayConfig, store: Store, ops: Ops, name: str) -> TestClient:
    c = TestClient(create_app(cfg, store, ops))  # type: ignore[arg-type]
    token = re.search(r'name="csrf" value="([^"]+)"', c.get("/login").text)
    assert token is not None
    r = c.post(
        "/login",
        data={"csrf": token.group(1), "username": name, "password": PASSWORD, "next": "/"},
        follow_redirects=False,
    )
    assert r.status_code == 303, r.text
    return c


def _csrf(page: str) -> str:
    token = re.search(r'name="csrf" value="([^"]+)"', page)
    assert token is not None
    return token.group(1)


def test_page_lists_self_tests_and_operator_starts_one(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    store = Store(cfg.database.url)
    hashed = Passwords().hash(PASSWORD)
    store.add_user("olivia", "operator", hashed, time.time())
    store.add_user("victor", "viewer", hashed, time.time())
    done = store.add_self_test("1.2.826.0.1.100", "archive", "olivia", time.time() - 60)
    timings = {"prepare": 1.0, "store": 2.0, "job": 30.0, "total": 33.0, "stage.segment": 20.0}
    store.finish_self_test(done, True, "job 7 done: delivered to archive", time.time(), timings, 7)
    ops = Ops(store)

    assert (
        TestClient(create_app(cfg, store, ops))
        .get(  # type: ignore[arg-type]
            "/self-test", follow_redirects=False
        )
        .status_code
        == 303
    )  # no session: to the login page

    viewer = _client(cfg, store, ops, "victor")
    page = viewer.get("/self-test")
    assert page.status_code == 200
    assert "job 7 done: delivered to archive" in page.text
    assert 'href="/jobs/7"' in page.text and "segment 20.00 s" in page.text
    assert 'id="self-test-run"' not in page.text  # a viewer gets no form...
    r = viewer.post("/self-test", data={"csrf": _csrf(page.text), "destination": ""})
    assert r.status_code == 403 and ops.calls == []  # ...and cannot act

    operator = _client(cfg, store, ops, "olivia")
    page = operator.get("/self-test")
    options = re.findall(r'<option value="([^"]*)">', page.text)
    assert options == ["", "archive", "planning"]
    assert "dry run (send nothing)" in page.text
    r = operator.post("/self-test", data={"destination": ""})
    assert r.status_code == 403 and ops.calls == []  # no CSRF token
    r = operator.post("/self-test", data={"csrf": _csrf(page.text), "destination": "x"})
    assert "No destination" in r.text and ops.calls == []
    r = operator.post("/self-test", data={"csrf": _csrf(page.text), "destination": ""})
    assert r.status_code == 200 and ops.calls == [("", "olivia")]
    assert "Self-test 2 started: to nothing (dry run)." in r.text
    assert "dry run" in r.text and r.text.count('data-self-test="') == 2
    actions = [r for r in store.audit_rows() if r["event"] == "action"]
    assert actions[-1]["outcome"] == "self-test" and "by olivia" in actions[-1]["detail"]
