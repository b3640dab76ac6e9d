"""A real Prometheus (Debian's ``prometheus``) scrapes a real gateway's ``/metrics`` (behind
its bearer token) and answers for the job just run; the shipped scrape config and alert rules
pass Debian's ``promtool``."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.demo.launcher import free_port
from gateway.demo.node import ReceivingNode
from gateway.demo.phantom import make_phantom, write_dicom_series
from tests.conftest import REPO, wait_for

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


TOKEN = "scrape-token-for-the-test"


@pytest.fixture
def gateway(make_gateway: Any, tmp_path: Path) -> Iterator[tuple[Any, ReceivingNode]]:
    """A real ``aircon serve`` with its console, /metrics behind a bearer token, delivering to
    a local node."""
    node = ReceivingNode(tmp_path / "planning", ae_title="ORTHANC")
    node.start()
    gw = make_gateway(node.port, http={"metrics_token": TOKEN})
    gw.start()
    try:
        yield gw, node
    finally:
        gw.stop()
        node.stop()


@pytest.fixture
def prometheus(tmp_path: Path, gateway: tuple[Any, ReceivingNode]) -> Iterator[int]:
    _need(PROMETHEUS)
    port = free_port()
    config = tmp_path / "prometheus.yml"
    target = f"127.0.0.1:{gateway[0].http_port}"
    scrape = {
        "job_name": "aircon",
        "authorization": {"type": "Bearer", "credentials": TOKEN},
        "static_configs": [{"targets": [target]}],
    }
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
    prometheus: int, gateway: tuple[Any, ReceivingNode], tmp_path: Path
) -> None:
    gw, node = gateway
    wait_for(lambda: query(prometheus, 'up{job="aircon"} == 1'), 30, what="a first scrape")
    assert query(prometheus, "aircon_jobs_total") == []  # no job has ended yet
    assert query(prometheus, "aircon_scp_listening == 1")

    folder = tmp_path / "study"
    write_dicom_series(make_phantom(905), folder, seed=905)
    assert gw.storescu(folder).returncode == 0
    gw.wait_jobs(1)

    def jobs_done() -> list[dict[str, Any]]:
        return query(prometheus, 'aircon_jobs_total{rule="pelvis-mr",outcome="done"}')

    [series] = wait_for(jobs_done, 30, what="aircon_jobs_total in Prometheus")
    assert series["metric"]["job"] == "aircon"
    assert float(series["value"][1]) == 1
    delivered = query(prometheus, 'aircon_deliveries_total{destination="planning"}')
    assert [float(s["value"][1]) for s in delivered] == [1]
    assert node.receipts
    count = query(
        prometheus,
        'aircon_stage_duration_seconds_count{stage="segment",model="pelvis-demo"}',
    )
    assert [float(s["value"][1]) for s in count] == [1]
    received = query(prometheus, 'aircon_instances_received_total{status="stored"}')
    assert [float(s["value"][1]) for s in received] == [24]
