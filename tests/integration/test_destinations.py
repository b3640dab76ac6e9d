"""The destinations against a real one (dcmtk ``storescp`` on loopback) and a serving gateway:
the echo monitor sees it up, down when it stops and up again when it comes back; a delivery to
a paused destination waits without counting attempts and goes out as soon as it is resumed."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.db.records import JobState
from gateway.demo.launcher import free_port
from tests.conftest import dcmtk_env, mr_slice, wait_for

pytestmark = pytest.mark.skipif(not shutil.which("storescp"), reason="dcmtk is not installed")


class StoreSCP:
    """dcmtk ``storescp`` on a fixed loopback port, stopped and started again at will; what it
    receives lands in ``folder``."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        folder.mkdir(parents=True, exist_ok=True)
        self.log = folder.parent / f"storescp-{self.port}.log"

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                ["storescp", "-od", str(self.folder), str(self.port)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=dcmtk_env(),
                stdin=subprocess.DEVNULL,
            )
        wait_for(self._listening, 30, what="storescp to listen")

    def _listening(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"storescp exited: {self.log.read_text(errors='replace')}")
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def files(self) -> list[Path]:
        return sorted(p for p in self.folder.iterdir() if p.is_file())

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[StoreSCP]:
    node = StoreSCP(tmp_path / "planning")
    node.start()
    yield node
    node.stop()


def aircon(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "-c", str(config), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_serving_gateway_sees_a_destination_go_down_and_come_back(
    make_gateway: Any, storescp: StoreSCP
) -> None:
    interval = 1.0
    gw = make_gateway(
        storescp.port, rules=[], monitor={"echo_interval_s": interval, "echo_timeout_s": 2}
    )
    gw.start()
    store = gw.store()
    ae = gw.cfg.destinations["planning"].ae_title

    def planning(up: bool) -> Any:
        row = store.destination_status().get("planning")
        return row if row is not None and row.up is up else None

    first = wait_for(lambda: planning(True), 15, what="the first echo to find it up")
    assert first.rtt_ms is not None and 0 < first.rtt_ms < 2000
    assert first.down_since is None and first.last_success_at == first.checked_at

    storescp.stop()
    stopped = time.time()
    down = wait_for(lambda: planning(False), 2 * interval + 10, what="the destination down")
    assert down.down_since is not None and down.down_since >= stopped - 0.5
    assert down.rtt_ms is None
    assert down.last_error.startswith(f"{ae}@127.0.0.1:{storescp.port}: ")
    seen = aircon(gw.config_path, "destinations", "--json")
    assert seen.returncode == 0, seen.stderr
    [row] = json.loads(seen.stdout)
    assert (row["name"], row["up"], row["down_since"]) == ("planning", False, down.down_since)
    assert (row["paused"], row["waiting"]) == (False, 0)

    storescp.start()
    back = wait_for(lambda: planning(True), 2 * interval + 10, what="the destination up again")
    assert back.down_since is None and back.rtt_ms is not None
    assert back.last_success_at > down.down_since
    transitions = [
        r["outcome"]
        for r in store.audit_rows()
        if r["event"] == "echo" and r["destination"] == "planning"
    ]
    assert transitions == ["down", "up"]
    assert gw.running


def test_a_delivery_to_a_paused_destination_waits_uncounted_and_goes_out_on_resume(
    make_gateway: Any, storescp: StoreSCP, tmp_path: Path
) -> None:
    # A long echo interval: a paused delivery is looked at again only every 30 s, so a
    # delivery within seconds of the resume is the resume's doing.
    gw = make_gateway(storescp.port, rules=[], monitor={"echo_interval_s": 60})
    gw.start()
    paused = aircon(gw.config_path, "destination", "pause", "planning", "--by", "J. Physicist")
    assert paused.returncode == 0, paused.stderr
    assert "destination planning paused" in paused.stdout

    store = gw.store()
    rtstruct = tmp_path / "rtstruct.dcm"
    ds = mr_slice()  # any storage object: storescp keeps what it is sent
    ds.save_as(rtstruct, enforce_file_format=True)
    job = store.create_job(ds.StudyInstanceUID, "manual", [], time.time())
    store.update_job(job.id, state=JobState.DELIVERING, rtstruct_path=str(rtstruct))
    [did] = store.create_deliveries(job.id, ["planning"])
    created = time.time()

    # The scheduler hands the due delivery to a worker, which finds the destination paused.
    postponed = wait_for(
        lambda: (d := store.delivery(did)) is not None and d.next_attempt_at > created + 20 and d,
        30,
        what="the worker to leave the paused delivery waiting",
    )
    assert (postponed.state, postponed.attempts) == ("pending", 0)
    assert store.waiting_deliveries() == {"planning": 1}
    assert storescp.files() == []

    resumed_at = time.time()
    resumed = aircon(gw.config_path, "destination", "resume", "planning", "--by", "J. Physicist")
    assert resumed.returncode == 0, resumed.stderr
    assert "1 delivery(ies) queued" in resumed.stdout
    done = wait_for(
        lambda: (d := store.delivery(did)) is not None and d.state == "delivered" and d,
        20,
        what="the delivery after the resume",
    )
    assert done.attempts == 1
    assert done.delivered_at - resumed_at < 10  # not the 30 s re-look
    assert len(storescp.files()) == 1
    assert store.job(job.id).state == JobState.DONE.value
    audit = [(r["event"], r["outcome"], r["detail"]) for r in store.audit_rows()]
    assert ("destination", "paused", "by J. Physicist") in audit
    assert ("destination", "resumed", "by J. Physicist") in audit
