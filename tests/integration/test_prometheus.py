"""A real Prometheus (Debian's ``prometheus``) scrapes ``/metrics`` and answers for the job
just run; the shipped scrape config and alert rules pass Debian's ``promtool``."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest

from gateway.db.database import Store
from gateway.db.records import DeliveryState
from gateway.demo.launcher import free_port
from gateway.monitor.metrics import MetricsExporter
from tests.conftest import REPO, wait_for
from tests.pipeline_rows import run_job
from tests.unit.test_metrics import Live, make_config

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"


def _need(tool: str) -> None:
    if not Path(tool).exists():
        pytest.skip(f"{tool} not installed (apt install prometheus)")


@pytest.mark.parametrize(
    ("command", "path"),
    [
        (["check", "config"], "deploy/prometheus.yml"),
        (["check", "rules"], "deploy/alert-rules.yml"),
        # The rules fire when they should (destination down, jobs failing, gateway down).
        (["test", "rules"], "deploy/alert-rules.test.yml"),
    ],
)
def test_shipped_prometheus_files_pass_promtool(command: list[str], path: str) -> None:
    _need(PROMTOOL)
    out = subprocess.run(
        [PROMTOOL, *command, path], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stdout + out.stderr
    if command == ["check", "rules"]:
        assert "SUCCESS: 11 rules found" in out.stdout


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        pass


@pytest.fixture
def metrics_server(tmp_path: Path) -> Iterator[tuple[int, Store]]:
    """``/metrics`` of a MetricsExporter, served on a loopback port until the console is."""
    store = Store(f"sqlite:///{tmp_path / 'aircon.db'}")
    exporter = MetricsExporter(make_config(tmp_path), store, Live())

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        if environ["PATH_INFO"] != "/metrics":
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found"]
        body, content_type = exporter.render()
        start_response("200 OK", [("Content-Type", content_type)])
        return [body]

    server: WSGIServer = make_server("127.0.0.1", 0, app, handler_class=_Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_port, store
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def prometheus(tmp_path: Path, metrics_server: tuple[int, Store]) -> Iterator[int]:
    _need(PROMETHEUS)
    port = free_port()
    config = tmp_path / "prometheus.yml"
    target = f"127.0.0.1:{metrics_server[0]}"
    scrape = {"job_name": "aircon", "static_configs": [{"targets": [target]}]}
    config.write_text(json.dumps({"global": {"scrape_interval": "1s"}, "scrape_configs": [scrape]}))
    log = (tmp_path / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(lambda: _ready(port), 60, what="Prometheus ready")
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=2) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def query(port: int, promql: str) -> list[dict[str, Any]]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=10) as r:
        answer = json.load(r)
    assert answer["status"] == "success", answer
    return list(answer["data"]["result"])


def test_prometheus_scrapes_the_job_just_run(
    prometheus: int, metrics_server: tuple[int, Store]
) -> None:
    _, store = metrics_server
    wait_for(lambda: query(prometheus, 'up{job="aircon"} == 1'), 30, what="a first scrape")
    assert query(prometheus, "aircon_jobs_total") == []  # no job has ended yet

    study = "1.2.826.0.1.3680043.8.498.11"
    deliveries = {"planning": DeliveryState.DELIVERED}
    run_job(store, study, "pelvis-mr", ("pelvis",), deliveries, t0=1_800_000_000.0)

    def jobs_done() -> list[dict[str, Any]]:
        return query(prometheus, 'aircon_jobs_total{rule="pelvis-mr",outcome="done"}')

    [series] = wait_for(jobs_done, 30, what="aircon_jobs_total in Prometheus")
    assert series["metric"]["job"] == "aircon"
    assert float(series["value"][1]) == 1
    delivered = query(prometheus, 'aircon_deliveries_total{destination="planning"}')
    assert [float(s["value"][1]) for s in delivered] == [1]
    quantile = query(
        prometheus,
        'histogram_quantile(0.5, aircon_stage_duration_seconds_bucket{stage="segment",'
        'model="pelvis"})',
    )
    assert 5 <= float(quantile[0]["value"][1]) <= 10  # the job's model ran 6 s: bucket 5-10 s
