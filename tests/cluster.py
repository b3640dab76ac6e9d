"""A scaled-out AIRCON for the tests and benches: one ``aircon serve --role receiver`` and N
``aircon worker`` processes on a real PostgreSQL database and a real Redis queue, sharing one
spool and one output folder (as the receiver and GPU workers of docker-compose's ``scale``
profile share volumes).

Each worker runs in its own UTS namespace with its own host name where the kernel allows it,
so that its leases look like those of a process on another machine: a killed worker's job is
then taken back only when its lease expires, as in a real cluster, not because its pid is gone.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from gateway.db.database import Store
from gateway.demo.launcher import free_port, write_config
from tests.conftest import GatewayProcess, wait_for
from tests.faults.harness import QUICK_MODEL, gateway_overrides, write_models


def _own_hostname_prefix(name: str) -> list[str]:
    """``unshare -u`` with host name ``name`` when this user may make a UTS namespace."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return []
    root = ["-u"] if os.getuid() == 0 else ["-r", "-u"]
    probe = subprocess.run([unshare, *root, "true"], capture_output=True)
    if probe.returncode != 0:
        return []
    return [unshare, *root, "sh", "-c", f'hostname {name} && exec "$@"', "worker"]


class WorkerProcess:
    """``aircon worker`` on a config; ready when it logs that it is."""

    def __init__(self, config: Path, hostname: str):
        self.config = config
        self.hostname = hostname
        self.log_path = config.parent / "worker.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 120) -> WorkerProcess:
        mark = self.log().count("ready (not listening)")
        prefix = _own_hostname_prefix(self.hostname)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [*prefix, sys.executable, "-m", "gateway", "-c", str(self.config), "worker"],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.config.parent,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        wait_for(
            lambda: self.log().count("ready (not listening)") > mark,
            timeout,
            what=f"worker {self.hostname} to start",
        )
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self, timeout: float = 60) -> None:
        """SIGTERM: a graceful stop (a running inference finishes first)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()


class Cluster:
    """Receiver + workers on ``database_url`` and ``redis_url``; the destination is the DICOM
    node at ``destination_port`` (Orthanc in the tests)."""

    def __init__(
        self,
        root: Path,
        database_url: str,
        redis_url: str,
        destination_port: int,
        *,
        workers: int = 2,
        model_seconds: float = 1.5,
        lease_s: float = 6.0,
        quiet_s: float = 2.0,
        model: str = QUICK_MODEL,
        threads: int | None = None,
    ):
        self.root = root
        models = write_models(root / "models")
        quick = models / QUICK_MODEL / "model.yaml"
        quick.write_text(quick.read_text().replace("seconds: 1.5", f"seconds: {model_seconds}"))
        overrides: dict[str, Any] = gateway_overrides(models, model)
        overrides["assembly"] = {**overrides["assembly"], "series_quiet_s": quiet_s}
        overrides["database"] = {"url": database_url}
        overrides["paths"] = {
            "spool": str(root / "shared" / "spool"),
            "output": str(root / "shared" / "rtstruct"),
            "returned": str(root / "shared" / "returned"),
            "models": str(models),
        }
        # Merged over write_config's local queue file: the cluster's queue is Redis.
        overrides["queue"] = {
            "workers": 2,
            "lease_s": lease_s,
            "poll_s": 0.2,
            "backend": "redis",
            "url": redis_url,
        }
        if threads is not None:
            overrides["segmentation"] = {**overrides["segmentation"], "threads": threads}
        port = free_port()
        self.receiver = GatewayProcess(
            self._config("receiver", port, destination_port, overrides),
            command=("serve", "--role", "receiver"),
        )
        self.workers = [
            WorkerProcess(
                self._config(f"worker{i}", free_port(), destination_port, overrides),
                hostname=f"gpu-worker-{i}",
            )
            for i in range(1, workers + 1)
        ]

    def _config(
        self, name: str, port: int, destination_port: int, overrides: dict[str, Any]
    ) -> Path:
        work = self.root / name
        return write_config(work, port, destination_port=destination_port, overrides=overrides)

    def start(self) -> Cluster:
        self.receiver.start()  # migrates the database first
        for worker in self.workers:
            worker.start()
        return self

    def store(self) -> Store:
        return self.receiver.store()

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.receiver.stop()
