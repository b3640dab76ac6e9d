"""The gateway as a real subprocess on loopback: the one launcher the demo, tests and bench share.

:func:`write_config` rewrites a config.yaml (the embedded one unless another is given) for a run
in a work folder: loopback port, spool, output, database and queue under the folder, the
destinations pointed at a local receiving node, and any other sections overridden.
:class:`Gateway` starts ``python -m gateway -c CONFIG serve`` on it, waits until it answers
C-ECHO, and stops it (SIGTERM, then SIGKILL); its stdout and stderr go to ``gateway.log`` in the
work folder.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import yaml

from gateway.errors import GatewayError

if TYPE_CHECKING:
    from gateway.config import DestinationConfig, GatewayConfig
    from gateway.db.database import Store

EMBEDDED_CONFIG = Path(__file__).resolve().parents[2] / "config.yaml"
LOOPBACK = "127.0.0.1"


class GatewayNotStarted(GatewayError):
    """``aircon serve`` exited, or did not answer C-ECHO in time; ``returncode`` is None while
    it still runs (it is stopped before this is raised)."""

    def __init__(self, message: str, returncode: int | None):
        super().__init__(message)
        self.returncode = returncode


def free_port() -> int:
    """A TCP port free on loopback now (another process may take it before it is bound)."""
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """``n`` different TCP ports free on loopback now: all are held until all are chosen (two
    calls of :func:`free_port` in a row can return the same port)."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(n):
            s = stack.enter_context(socket.socket())
            s.bind((LOOPBACK, 0))
            ports.append(int(s.getsockname()[1]))
        return ports


def write_config(
    work: Path,
    port: int,
    *,
    source: Path = EMBEDDED_CONFIG,
    destination_port: int | None = None,
    destination_ae: str | None = None,
    peer: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    http_port: int | None = None,
) -> Path:
    """``source`` rewritten for a run in ``work``; written to ``work/config.yaml``.

    It listens on loopback ``port``; spool, output, database and queue live under ``work``;
    a relative models folder is resolved against ``source``'s folder. ``destination_port``:
    every destination becomes plain DICOM to loopback on that port (called ``destination_ae``
    when given, else by its own AE title). ``peer``: a calling AE title added to the peers when
    missing. ``overrides``: per top-level section, a mapping is merged into the section,
    anything else replaces it. The console listens on loopback ``http_port`` (default: a free
    port, so that several gateways and the demo never compete for one).
    """
    raw: dict[str, Any] = yaml.safe_load(source.read_text()) or {}
    models = Path(raw.get("paths", {}).get("models", "models"))
    raw["listen"] = {"host": LOOPBACK, "port": port}
    raw["paths"] = {
        "spool": str(work / "spool"),
        "output": str(work / "rtstruct"),
        "models": str(models if models.is_absolute() else source.resolve().parent / models),
    }
    raw["database"] = {"url": f"sqlite:///{work / 'aircon.db'}"}
    raw["http"] = {
        **(raw.get("http") or {}),
        "host": LOOPBACK,
        "port": http_port if http_port is not None else free_port(),
    }
    raw["queue"] = {**raw.get("queue", {}), "backend": "sqlite", "path": str(work / "queue.db")}
    if peer is not None:
        peers = raw.get("peers") or []
        if not any(p.get("ae_title") == peer for p in peers):
            peers.append({"ae_title": peer})
        raw["peers"] = peers
    if destination_port is not None:
        # Replaced, not merged: the local node speaks no TLS whatever the real one does.
        raw["destinations"] = {
            name: {
                "ae_title": destination_ae or (dest or {}).get("ae_title") or "PLANNING",
                "host": LOOPBACK,
                "port": destination_port,
            }
            for name, dest in (raw.get("destinations") or {"planning": None}).items()
        }
    for key, value in (overrides or {}).items():
        section = raw.get(key)
        if isinstance(value, Mapping) and isinstance(section, dict):
            raw[key] = {**section, **value}
        else:
            raw[key] = value
    work.mkdir(parents=True, exist_ok=True)
    path = work / "config.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


class Gateway:
    """``aircon serve`` on ``config_path`` as a subprocess (cwd and ``gateway.log``: the config's
    folder). Start and stop as often as needed; as a context manager it is started on entry and
    stopped on exit.

    Ready means it answered a C-ECHO from ``calling_ae`` (one of the config's peers) on its
    plain port: the listener is bound after the spool and the database were recovered.
    """

    def __init__(
        self,
        config_path: Path,
        *,
        calling_ae: str = "STORESCU",
        command: Sequence[str] = ("serve",),
    ):
        self.config_path = config_path
        self.command = tuple(command)  # e.g. ("serve", "--role", "receiver")
        self.work = config_path.parent
        self.calling_ae = calling_ae
        self.log_path = self.work / "gateway.log"
        self.proc: subprocess.Popen[bytes] | None = None
        raw = yaml.safe_load(config_path.read_text())
        self.port = int(raw["listen"]["port"])
        self.http_port = int((raw.get("http") or {}).get("port") or 0)

    @property
    def console_url(self) -> str:
        """The console's address (plain HTTP on loopback, as write_config makes it)."""
        return f"http://{LOOPBACK}:{self.http_port}"

    @property
    def cfg(self) -> GatewayConfig:
        from gateway.config import load_config

        return load_config(self.config_path)

    @property
    def dest(self) -> DestinationConfig:
        """The gateway as a destination to send to (plain port, loopback)."""
        from gateway.config import DestinationConfig

        return DestinationConfig(ae_title=self.cfg.ae_title, host=LOOPBACK, port=self.port)

    def store(self) -> Store:
        from gateway.db.database import Store

        return Store(self.cfg.database.url)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 120.0) -> Gateway:
        """Start it and wait until it answers C-ECHO; :class:`GatewayNotStarted` when it exits
        first or does not answer within ``timeout`` seconds (then it is stopped)."""
        if self.running:
            raise GatewayError("the gateway is already running")
        cfg = self.cfg  # an invalid config fails here, before anything starts
        self.port = cfg.listen.port
        with self.log_path.open("ab") as log_file:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gateway", "-c", str(self.config_path), *self.command],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=self.work,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        from gateway.dicom.scu import echo

        assert self.proc is not None
        dest = self.dest
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise GatewayNotStarted(
                    f"the gateway exited with status {self.proc.returncode} before it answered "
                    f"C-ECHO; see {self.log_path}:\n{self.log()[-3000:]}",
                    self.proc.returncode,
                )
            # Refused connections are cheap to retry; an association only once it listens.
            try:
                socket.create_connection((LOOPBACK, self.port), timeout=1).close()
            except OSError:
                time.sleep(0.1)
                continue
            if echo(dest, self.calling_ae, timeout=5).ok and self._console_up():
                return
            time.sleep(0.2)
        self.stop()
        raise GatewayNotStarted(
            f"the gateway did not answer C-ECHO within {timeout:.0f} s; see {self.log_path}",
            None,
        )

    def _console_up(self) -> bool:
        """The console listens (it starts just after the SCP); true when it is switched off."""
        if not self.http_port or not self.cfg.http.enabled:
            return True
        try:
            socket.create_connection((LOOPBACK, self.http_port), timeout=1).close()
        except OSError:
            return False
        return True

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM (the queue stops without waiting for running jobs: the database keeps their
        state), SIGKILL after ``timeout`` seconds; the exit status (None when never started)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL now, as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> Gateway:
        return self.start() if not self.running else self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
