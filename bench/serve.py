"""The gateway as a subprocess for the benchmarks: start it, wait until it answers C-ECHO."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from gateway.config import DestinationConfig, GatewayConfig
from gateway.dicom.scu import echo


@contextmanager
def running_gateway(
    cfg_path: Path, cfg: GatewayConfig, work: Path, timeout: float = 120
) -> Iterator[tuple[subprocess.Popen[bytes], DestinationConfig]]:
    """``aircon serve`` on ``cfg_path`` (log in ``work/gateway.log``), ready to receive; stopped
    (SIGINT, then killed after 30 s) on exit."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "-c", str(cfg_path), "serve"],
        stdout=(work / "gateway.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    gw = DestinationConfig(ae_title=cfg.ae_title, host="127.0.0.1", port=cfg.listen.port)
    deadline = time.monotonic() + timeout
    while not echo(gw, "AIRCON", timeout=2).ok:
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            raise SystemExit("gateway did not start; see " + str(work / "gateway.log"))
        time.sleep(0.3)
    try:
        yield proc, gw
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
