"""The console's self-test against a real gateway process: the phantom study through our own
SCP, the rule's model and the RTSTRUCT, delivered to a real dcmtk storescp that the operator
chose (and to no other), or to nothing for a dry run; and refused in words when our AE title is
not a peer. Everything is driven as an operator would: signed in, from the /self-test form."""

from __future__ import annotations

import re
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom import dcmread

from gateway.console.security import Passwords
from gateway.db.tables import SelfTestRow
from gateway.demo.launcher import free_port
from tests.conftest import dcmtk_env, wait_for

pytestmark = pytest.mark.integration

PASSWORD = "correct horse battery"


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


class StoreSCP:
    """dcmtk ``storescp`` writing what it receives into ``folder``."""

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True)
        self.port = free_port()
        self.log = (folder.parent / f"storescp-{self.port}.log").open("wb")
        self.proc = subprocess.Popen(
            ["storescp", "-od", str(folder), str(self.port)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=dcmtk_env(),
        )
        wait_for(self._listening, 30, what="storescp to listen")

    def _listening(self) -> bool:
        return _listening(self.port)

    def modalities(self) -> list[str]:
        return [str(dcmread(f, stop_before_pixels=True).Modality) for f in self.folder.iterdir()]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        self.log.close()


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[Callable[[str], StoreSCP]]:
    started: list[StoreSCP] = []

    def factory(name: str) -> StoreSCP:
        started.append(StoreSCP(tmp_path / name))
        return started[-1]

    yield factory
    for node in started:
        node.stop()


def _operator(gw: Any, http_port: int) -> httpx.Client:
    """Signed in to the gateway's console as an operator."""
    client = httpx.Client(base_url=f"http://127.0.0.1:{http_port}", follow_redirects=True)
    page = client.get("/login").text
    token = re.search(r'name="csrf" value="([^"]+)"', page)
    assert token is not None
    r = client.post(
        "/login",
        data={
            "csrf": token.group(1),
            "username": "olivia",
            "password": PASSWORD,
            "next": "/self-test",
        },
    )
    assert r.status_code == 200 and "Sign out" in r.text, r.text[-2000:]
    return client


def _run_self_test(client: httpx.Client, destination: str) -> str:
    page = client.get("/self-test").text
    token = re.search(r'name="csrf" value="([^"]+)"', page)
    assert token is not None
    r = client.post(
        "/self-test",
        data={"csrf": token.group(1), "destination": destination},
        headers={"referer": f"{client.base_url}/self-test"},
    )
    assert r.status_code == 200, r.text[-2000:]
    flash = re.search(r'id="flash">([^<]*)<', r.text)
    assert flash is not None, r.text[-2000:]
    return flash.group(1)


def _start(make_gateway: Any, destination_port: int, **overrides: Any) -> tuple[Any, int]:
    http_port = free_port()
    gw = make_gateway(
        destination_port=destination_port,
        http={"enabled": True, "host": "127.0.0.1", "port": http_port},
        **overrides,
    )
    gw.store().add_user("olivia", "operator", Passwords().hash(PASSWORD), time.time())
    gw.start()
    # The console starts just after the SCP answers C-ECHO.
    wait_for(lambda: _listening(http_port), 30, what="the console to listen")
    return gw, http_port


def _ended(gw: Any, n: int, timeout: float) -> list[SelfTestRow]:
    def ended() -> list[SelfTestRow] | None:
        if gw.proc is not None and gw.proc.poll() is not None:
            raise AssertionError(f"gateway exited: {gw.log()[-3000:]}")
        rows = gw.store().self_tests()
        return rows if len(rows) >= n and all(r.finished_at for r in rows) else None

    return sorted(wait_for(ended, timeout, interval=1.0, what="the self-tests"), key=lambda r: r.id)


def test_dry_run_and_a_chosen_destination_pass(make_gateway, storescp) -> None:
    planning, archive = storescp("planning"), storescp("archive")
    gw, http_port = _start(
        make_gateway,
        planning.port,
        destinations={
            "archive": {"ae_title": "ARCHIVE", "host": "127.0.0.1", "port": archive.port}
        },
    )
    with closing(_operator(gw, http_port)) as client:
        assert _run_self_test(client, "") == "Self-test 1 started: to nothing (dry run)."
        assert _run_self_test(client, "archive") == "Self-test 2 started: to archive."
        dry, real = _ended(gw, 2, 600)
        page = client.get("/self-test").text

    store = gw.store()
    assert dry.state == "passed", dry.detail
    assert dry.destination == "" and dry.requested_by == "olivia"
    assert dry.job_id is not None and dry.detail == f"job {dry.job_id} done: dry run: not sent"
    dry_job = store.job(dry.job_id)
    assert dry_job is not None and dry_job.state == "done" and dry_job.rtstruct_uid
    assert store.deliveries_for(dry.job_id) == []

    assert real.state == "passed", real.detail
    assert (
        real.job_id is not None and real.detail == f"job {real.job_id} done: delivered to archive"
    )
    assert [d.destination for d in store.deliveries_for(real.job_id)] == ["archive"]
    # The rule delivers to 'planning'; the self-test went to the chosen destination only.
    wait_for(lambda: archive.modalities(), 30, what="the archive to hold the RTSTRUCT")
    assert archive.modalities() == ["RTSTRUCT"]
    assert planning.modalities() == []

    for t in (dry, real):
        assert {"prepare", "store", "job", "total", "stage.segment"} <= set(t.timings)
        assert t.timings["total"] >= t.timings["job"] > 0
        assert t.study_uid.startswith(gw.cfg.rtstruct.uid_root)
    audit = [r for r in store.audit_rows() if r["event"] == "selftest"]
    assert sorted(r["outcome"] for r in audit) == ["passed", "passed", "started", "started"]
    assert f'href="/jobs/{real.job_id}"' in page and "delivered to archive" in page


def test_not_a_peer_fails_with_the_reason(make_gateway, storescp) -> None:
    planning = storescp("planning")
    gw, http_port = _start(make_gateway, planning.port, peers=[{"ae_title": "STORESCU"}])
    with closing(_operator(gw, http_port)) as client:
        _run_self_test(client, "planning")
        (row,) = _ended(gw, 1, 60)
        page = client.get("/self-test").text
    assert row.state == "failed"
    assert row.detail.startswith("our AE title AIRCON is not among the peers")
    assert "is not among the peers" in page
    assert gw.store().list_studies() == [] and planning.modalities() == []
