"""Shared fixtures: real peers (Orthanc, dcmtk) and the gateway as a real subprocess.

Servers bind to loopback on free ports. Orthanc 1.10 listens on all interfaces, so tests that
start it run only inside a private network namespace (``scripts/run-tests.sh`` provides one and
sets AIRCON_TEST_NETNS=1).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.demo.run import free_port

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
PROSTATEX = SHARED_DATA / "prostatex" / "ProstateX-0000"
PROSTATEX_T2 = PROSTATEX / "07-07-2011" / "4.000000-t2tsetra-00702"


def dcmtk_env() -> dict[str, str]:
    # Without TCP_NODELAY dcmtk stalls ~44 ms per message on loopback.
    return {**os.environ, "TCP_NODELAY": "1"}


def wait_for(
    predicate: Any, timeout: float, interval: float = 0.25, what: str = "condition"
) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture(scope="session")
def prostatex() -> Path:
    if not PROSTATEX.is_dir():
        pytest.skip(f"real test data not found at {PROSTATEX}")
    return PROSTATEX


# ---------------------------------------------------------------------------------------------
# Orthanc: the stand-in planning system


@dataclass
class Orthanc:
    dicom_port: int
    http_port: int
    proc: subprocess.Popen[bytes]
    ae_title: str = "ORTHANC"

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=10) as r:
            data = r.read()
        return json.loads(data) if data[:1] in (b"{", b"[") else data

    def post(self, path: str, body: dict[str, Any]) -> Any:
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}{path}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    def instances_of_modality(self, modality: str) -> list[str]:
        series = self.post(
            "/tools/find", {"Level": "Series", "Query": {"Modality": modality}, "Expand": True}
        )
        return [i for s in series for i in s["Instances"]]

    def download(self, instance_id: str, dest: Path) -> Path:
        dest.write_bytes(self.get(f"/instances/{instance_id}/file"))
        return dest


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    if os.environ.get("AIRCON_TEST_NETNS") != "1":
        pytest.skip("Orthanc listens on all interfaces: run via scripts/run-tests.sh")
    exe = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
    if not Path(exe).exists():
        pytest.skip("Debian's orthanc is not installed")
    dicom_port, http_port = free_port(), free_port()
    db = tmp_path / "orthanc-db"
    conf = tmp_path / "orthanc.json"
    conf.write_text(
        json.dumps(
            {
                "Name": "AIRCON-TEST",
                "StorageDirectory": str(db),
                "IndexDirectory": str(db),
                "HttpPort": http_port,
                "DicomPort": dicom_port,
                "DicomAet": "ORTHANC",
                "RemoteAccessAllowed": False,
                "AuthenticationEnabled": False,
                "DicomCheckCalledAet": False,
                "DicomAlwaysAllowStore": True,
                "Plugins": [],
                "DicomModalities": {},
                "StableAge": 1,
            }
        )
    )
    log = (tmp_path / "orthanc.log").open("wb")
    proc = subprocess.Popen([exe, str(conf)], stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    node = Orthanc(dicom_port, http_port, proc)

    def up() -> bool:
        try:
            return bool(node.get("/system"))
        except OSError:
            return False

    wait_for(up, 30, what="Orthanc to start")
    yield node
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


# ---------------------------------------------------------------------------------------------
# The gateway as a subprocess


@dataclass
class GatewayProcess:
    config_path: Path
    port: int
    work: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def cfg(self) -> Any:
        from gateway.config import load_config

        return load_config(self.config_path)

    def start(self, timeout: float = 90) -> None:
        log = (self.work / "gateway.log").open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "-c", str(self.config_path), "serve"],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.work,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

        def answers() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"gateway exited: {self.log()[-3000:]}")
            r = subprocess.run(
                ["echoscu", "-aet", "STORESCU", "-aec", "AIRCON", "127.0.0.1", str(self.port)],
                capture_output=True,
                env=dcmtk_env(),
            )
            return r.returncode == 0

        wait_for(answers, timeout, interval=0.5, what="the gateway to answer C-ECHO")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log(self) -> str:
        return (self.work / "gateway.log").read_text(errors="replace")

    def store(self) -> Any:
        from gateway.db.database import Store

        return Store(self.cfg.database.url)

    def storescu(
        self, path: Path, calling_ae: str = "STORESCU"
    ) -> subprocess.CompletedProcess[str]:
        args = ["storescu", "-aet", calling_ae, "-aec", "AIRCON"]
        if path.is_dir():
            args += ["+sd", "+r"]
        return subprocess.run(
            args + ["127.0.0.1", str(self.port), str(path)],
            capture_output=True,
            text=True,
            env=dcmtk_env(),
            timeout=300,
        )

    def jobs(self) -> list[dict[str, Any]]:
        from gateway.monitor import describe

        st = self.store()
        return describe(st, st.list_jobs())

    def wait_jobs(self, n: int, timeout: float = 240) -> list[dict[str, Any]]:
        def done() -> list[dict[str, Any]] | None:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"gateway exited: {self.log()[-3000:]}")
            jobs = self.jobs()
            finished = [j for j in jobs if j["state"] in ("done", "failed")]
            return jobs if len(finished) >= n else None

        return wait_for(done, timeout, interval=0.5, what=f"{n} finished job(s)")


def rule(name: str, models: list[str], **extra: Any) -> dict[str, Any]:
    """A routing rule for test configs: any MR study to ``models``, delivered to 'planning'."""
    return {
        "name": name,
        "match": {"series": {"Modality": "^MR$"}},
        "models": models,
        "destinations": ["planning"],
        **extra,
    }


def write_gateway_config(work: Path, destination_port: int, **overrides: Any) -> Path:
    raw = yaml.safe_load((REPO / "config.yaml").read_text())
    raw["listen"] = {"host": "127.0.0.1", "port": overrides.pop("port")}
    raw["paths"] = {
        "spool": str(work / "spool"),
        "output": str(work / "rtstruct"),
        "models": str(REPO / "models"),
    }
    raw["database"] = {"url": f"sqlite:///{work / 'aircon.db'}"}
    raw["queue"] = {"backend": "sqlite", "path": str(work / "queue.db"), "workers": 2}
    raw["storage"] = {"min_free_mb": 100}
    raw["destinations"]["planning"]["port"] = destination_port
    for key, value in overrides.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    path = work / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture
def make_gateway(tmp_path: Path) -> Iterator[Any]:
    started: list[GatewayProcess] = []

    def factory(destination_port: int, **overrides: Any) -> GatewayProcess:
        work = tmp_path / f"gw{len(started)}"
        work.mkdir()
        port = free_port()
        overrides.setdefault("assembly", {"series_quiet_s": 2, "study_timeout_s": 300})
        overrides.setdefault("rules", [rule("pelvis-mr", ["pelvis-demo"])])
        cfg = write_gateway_config(work, destination_port, port=port, **overrides)
        gw = GatewayProcess(cfg, port, work)
        started.append(gw)
        return gw

    yield factory
    for gw in started:
        gw.stop()
