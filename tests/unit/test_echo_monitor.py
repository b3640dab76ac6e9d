"""The destinations' echo status: up/down transitions as stored and audited, the monitor's
answer for a destination that does not listen, its loop surviving failures, and the overview."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from gateway.config import GatewayConfig
from gateway.db.database import Store
from gateway.demo.launcher import free_port
from gateway.monitor.echo import EchoMonitor, destinations_overview


def make_config(tmp_path: Path, port: int = 104, interval: float = 60.0) -> GatewayConfig:
    return GatewayConfig.model_validate(
        {
            "destinations": {
                "planning": {"ae_title": "TPS", "host": "127.0.0.1", "port": port},
                "archive": {"ae_title": "PACS", "host": "127.0.0.1", "port": port},
            },
            "paths": {"spool": tmp_path / "spool", "output": tmp_path / "out"},
            "monitor": {"echo_interval_s": interval, "echo_timeout_s": 2},
        }
    )


def echo_audit(store: Store) -> list[tuple[str, str, float]]:
    return [
        (r["destination"], r["outcome"], r["at"])
        for r in store.audit_rows()
        if r["event"] == "echo"
    ]


def test_up_and_down_transitions_are_stored_once_and_audited(db: Store) -> None:
    assert db.record_echo("planning", False, 100.0, None, "TPS@h:104: refused") is False
    row = db.destination_status()["planning"]
    assert (row.up, row.down_since, row.last_success_at) == (False, 100.0, None)
    assert row.last_error == "TPS@h:104: refused"

    db.record_echo("planning", False, 160.0, None, "TPS@h:104: refused")
    assert db.destination_status()["planning"].down_since == 100.0  # down since the first

    assert db.record_echo("planning", True, 220.0, 3.5, "") is True
    row = db.destination_status()["planning"]
    assert (row.up, row.rtt_ms, row.down_since, row.last_success_at) == (True, 3.5, None, 220.0)
    assert row.last_error == ""

    assert db.record_echo("planning", True, 280.0, 2.0, "") is False
    assert db.record_echo("planning", False, 340.0, None, "timeout") is True
    row = db.destination_status()["planning"]
    assert (row.down_since, row.last_success_at) == (340.0, 280.0)
    # The first result is no transition; each change afterwards is audited once.
    assert echo_audit(db) == [("planning", "up", 220.0), ("planning", "down", 340.0)]


def test_a_destination_that_does_not_listen_is_down_with_a_reason(
    tmp_path: Path, db: Store
) -> None:
    port = free_port()  # nothing listens there
    cfg = make_config(tmp_path, port=port)
    monitor = EchoMonitor(cfg, db, "AIRCON", clock=lambda: 500.0)
    status = monitor.check("planning")
    assert (status.name, status.ae_title, status.port) == ("planning", "TPS", port)
    assert (status.up, status.rtt_ms, status.down_since, status.checked_at) == (
        False,
        None,
        500.0,
        500.0,
    )
    assert status.last_error.startswith(f"TPS@127.0.0.1:{port}: ")
    assert "peer down" in status.last_error
    with pytest.raises(KeyError):
        monitor.check("nowhere")


def test_the_loop_checks_at_once_and_survives_a_failed_pass(
    tmp_path: Path, db: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monitor = EchoMonitor(make_config(tmp_path, interval=0.05), db, "AIRCON")
    stop = threading.Event()
    passes: list[int] = []

    def check_all() -> list[object]:
        passes.append(len(passes))
        if len(passes) == 1:
            raise RuntimeError("database is locked")
        if len(passes) == 3:
            stop.set()
        return []

    monkeypatch.setattr(monitor, "check_all", check_all)
    thread = threading.Thread(target=monitor.run, args=(stop,), daemon=True)
    thread.start()
    thread.join(10)
    assert not thread.is_alive()
    assert passes == [0, 1, 2]


def test_overview_lists_every_destination_with_pause_and_waiting_deliveries(
    tmp_path: Path, db: Store
) -> None:
    cfg = make_config(tmp_path)
    job = db.create_job("1.2.840.99.1", "mr", ["pelvis"], 1.0)
    db.create_deliveries(job.id, ["planning", "archive"])
    db.record_echo("planning", True, 10.0, 4.0, "")
    db.set_paused("archive", True, "J. Physicist", 20.0)
    rows = {r.name: r.as_dict() for r in destinations_overview(cfg, db)}
    assert list(rows) == ["archive", "planning"]
    assert rows["planning"] == {
        "name": "planning",
        "ae_title": "TPS",
        "host": "127.0.0.1",
        "port": 104,
        "up": True,
        "rtt_ms": 4.0,
        "checked_at": 10.0,
        "last_success_at": 10.0,
        "down_since": None,
        "last_error": "",
        "paused": False,
        "paused_by": "",
        "waiting": 1,
    }
    archive = rows["archive"]
    assert (archive["up"], archive["paused"], archive["paused_by"]) == (None, True, "J. Physicist")
    assert archive["waiting"] == 1
