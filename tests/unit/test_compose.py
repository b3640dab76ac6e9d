"""docker-compose.yml and the configs it mounts (deploy/compose/), as shipped.

The compose file is checked by Docker Compose itself (`docker-compose config`: Debian's 1.29
package, or the `docker compose` plugin), which validates it against the compose schema and
needs no Docker daemon; the configs by gateway.config's loader, laid out as in the container.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from gateway.config import GatewayConfig, load_config
from gateway.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"
EMBEDDED = REPO / "deploy" / "compose" / "config.yaml"
SCALE = REPO / "deploy" / "compose" / "scale.yaml"
CERT_FILES = {"/etc/aircon/tls/console.pem", "/etc/aircon/tls/console.key"}


def _compose_command() -> list[str]:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30)
        if probe.returncode == 0:
            return ["docker", "compose"]
    pytest.fail("docker-compose not found: scripts/install.sh --dev installs Debian's package")


def _compose_config(*args: str) -> subprocess.CompletedProcess[str]:
    # Without the operator's .env and variables: the defaults as shipped.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRCON_", "COMPOSE_"))}
    return subprocess.run(
        [*_compose_command(), "-f", str(COMPOSE), "--project-directory", str(REPO), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    proc = _compose_config("--profile", "scale", "--profile", "planning", "config")
    assert proc.returncode == 0, f"docker-compose.yml is invalid:\n{proc.stderr}"
    parsed = yaml.safe_load(proc.stdout)
    assert isinstance(parsed, dict)
    return parsed


def _in_container(config: Path, tmp_path: Path, with_cert: bool = True) -> GatewayConfig:
    """``config`` loaded as the container has it: at /opt/aircon/config.yaml beside models/;
    the console certificate (made by the console-cert service) replaced by files in tmp_path."""
    root = tmp_path / "opt-aircon"
    root.mkdir()
    (root / "models").symlink_to(REPO / "models")
    shutil.copy(config, root / "config.yaml")
    overrides: dict[str, Any] = {}
    if with_cert:
        for name in ("console.pem", "console.key"):
            (tmp_path / name).write_text("placeholder")
        overrides = {
            "http": {
                "tls": {
                    "certificate": str(tmp_path / "console.pem"),
                    "private_key": str(tmp_path / "console.key"),
                }
            }
        }
    return load_config(root / "config.yaml", overrides)


def _mounted_config(service: dict[str, Any]) -> Path:
    mounts = [
        str(v if isinstance(v, str) else f"{v['source']}:{v['target']}") for v in service["volumes"]
    ]
    (source,) = [m.split(":")[0] for m in mounts if ":/opt/aircon/config.yaml" in m]
    return Path(source).resolve()


def _published(service: dict[str, Any]) -> set[tuple[str, int]]:
    """(host address or "" for all, host port) of each published port: compose writes the
    long form or "HOST_IP:PUBLISHED:TARGET/tcp" depending on its version."""
    out = set()
    for p in service.get("ports", []):
        if isinstance(p, dict):
            out.add((str(p.get("host_ip", "")), int(p["published"])))
        else:
            parts = str(p).split("/")[0].split(":")
            out.add((parts[0] if len(parts) == 3 else "", int(parts[-2])))
    return out


# ---------------------------------------------------------------------------------------------
# The configs


@pytest.mark.parametrize("config", [EMBEDDED, SCALE], ids=["embedded", "scale"])
def test_shipped_configs_listen_in_the_container_and_deliver_to_orthanc(
    config: Path, tmp_path: Path
) -> None:
    cfg = _in_container(config, tmp_path)
    assert (cfg.listen.host, cfg.listen.port) == ("0.0.0.0", 11112)
    assert {(n, d.ae_title, d.host, d.port) for n, d in cfg.destinations.items()} == {
        ("orthanc", "ORTHANC", "orthanc", 4242)
    }
    assert cfg.rules and all(r.destinations == ("orthanc",) for r in cfg.rules)
    assert {"pelvis-demo", "pelvis-dixon-demo", "taps"} <= set(cfg.models)
    # The image's health check (echoscu -aet ECHOSCU inside the container) is let in.
    assert any(p.ae_title == "ECHOSCU" and p.host == "127.0.0.1" for p in cfg.peers)
    # The console beyond loopback: HTTPS, from the certificate the console-cert service makes.
    assert cfg.http.enabled and cfg.http.host == "0.0.0.0" and cfg.http.tls is not None
    assert cfg.paths.spool == tmp_path / "opt-aircon" / "var" / "spool"


@pytest.mark.parametrize("config", [EMBEDDED, SCALE], ids=["embedded", "scale"])
def test_without_the_certificate_only_the_certificate_is_missing(
    config: Path, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError) as err:
        _in_container(config, tmp_path, with_cert=False)
    assert {reason.split()[0] for _, reason in err.value.problems} == CERT_FILES


def test_the_embedded_config_keeps_everything_in_one_process(tmp_path: Path) -> None:
    cfg = _in_container(EMBEDDED, tmp_path)
    assert cfg.database.url.startswith("sqlite:///") and cfg.queue.backend == "sqlite"


def test_the_scale_config_uses_postgres_redis_and_the_gpu(tmp_path: Path) -> None:
    cfg = _in_container(SCALE, tmp_path)
    db = urlsplit(cfg.database.url)
    assert (db.scheme, db.hostname, db.path) == ("postgresql+psycopg", "postgres", "/aircon")
    assert db.password is None  # libpq reads PGPASSWORD, set by docker-compose.yml
    queue = urlsplit(cfg.queue.url or "")
    assert (cfg.queue.backend, queue.scheme, queue.hostname, queue.port) == (
        "redis",
        "redis",
        "redis",
        6379,
    )
    assert queue.password
    assert cfg.segmentation.device == "cuda"


# ---------------------------------------------------------------------------------------------
# The compose file


def test_the_default_is_the_all_in_one_gateway_with_its_own_config(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    unprofiled = {name for name, s in services.items() if not s.get("profiles")}
    assert unprofiled == {"gateway", "console-cert"}
    gateway = services["gateway"]
    assert gateway["command"] == ["serve"]
    assert _mounted_config(gateway) == EMBEDDED
    assert _published(gateway) == {("", 11112), ("127.0.0.1", 8443)}


def test_the_scale_profile_has_receiver_workers_redis_postgres_orthanc(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    scale = {name for name, s in services.items() if "scale" in s.get("profiles", [])}
    assert scale == {"receiver", "worker-0", "worker-1", "redis", "postgres", "orthanc"}
    assert "planning" in services["orthanc"]["profiles"]
    receiver = services["receiver"]
    assert receiver["command"] == ["serve", "--role", "receiver"]
    assert receiver["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert receiver["depends_on"]["redis"]["condition"] == "service_healthy"
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    for name in ("receiver", "worker-0", "worker-1"):
        assert _mounted_config(services[name]) == SCALE, name


def test_each_worker_is_pinned_to_its_own_gpu(compose: dict[str, Any]) -> None:
    services = compose["services"]
    pinned = {}
    for name in ("worker-0", "worker-1"):
        assert services[name]["command"] == ["worker"]
        (device,) = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert device["capabilities"] == ["gpu"] and "count" not in device
        pinned[name] = device["device_ids"]
    assert pinned == {"worker-0": ["0"], "worker-1": ["1"]}
    assert "devices" not in str(services["receiver"].get("deploy", ""))


def test_redis_and_postgres_are_reachable_only_inside(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert compose["networks"]["backend"]["internal"] is True
    for name in ("redis", "postgres", "worker-0", "worker-1"):
        assert not services[name].get("ports"), name
        assert set(services[name]["networks"]) == {"backend"}, name
    assert "--requirepass" in " ".join(services["redis"]["command"])


def test_the_shipped_passwords_agree(compose: dict[str, Any]) -> None:
    """The Redis password is written twice (the config cannot read the environment): the
    compose default must be the one in scale.yaml's queue.url, or nothing connects."""
    services = compose["services"]
    in_config = urlsplit(yaml.safe_load(SCALE.read_text())["queue"]["url"]).password
    assert services["redis"]["environment"]["REDIS_PASSWORD"] == in_config
    postgres = services["postgres"]["environment"]["POSTGRES_PASSWORD"]
    for name in ("receiver", "worker-0", "worker-1"):
        assert services[name]["environment"]["PGPASSWORD"] == postgres, name


def test_workers_share_the_spool_and_output_with_the_receiver(compose: dict[str, Any]) -> None:
    def targets(name: str) -> dict[str, str]:
        out = {}
        for v in compose["services"][name]["volumes"]:
            source, target = (
                (v.split(":")[:2]) if isinstance(v, str) else (v["source"], v["target"])
            )
            out[target] = source
        return out

    receiver = targets("receiver")
    for name in ("worker-0", "worker-1"):
        worker = targets(name)
        for path in ("/opt/aircon/var/spool", "/opt/aircon/var/rtstruct"):
            assert worker[path] == receiver[path], (name, path)


def test_a_broken_compose_file_is_refused(tmp_path: Path) -> None:
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE.read_text().replace("service_healthy", "healthy", 1))
    proc = subprocess.run(
        [*_compose_command(), "-f", str(broken), "--project-directory", str(REPO), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0 and "condition" in proc.stderr
