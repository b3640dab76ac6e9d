"""The launcher's config rewriter: the embedded config made to run in a work folder."""

from __future__ import annotations

from pathlib import Path

import yaml

from gateway.config import load_config
from gateway.demo.launcher import EMBEDDED_CONFIG, write_config


def test_embedded_config_runs_in_the_work_folder_towards_the_local_node(tmp_path: Path) -> None:
    work = tmp_path / "work"
    path = write_config(
        work,
        40001,
        destination_port=40002,
        destination_ae="PLANNING",
        peer="DEMO",
        overrides={"assembly": {"series_quiet_s": 1.5}, "rules": []},
    )
    cfg = load_config(path)
    assert path == work / "config.yaml"
    assert (cfg.listen.host, cfg.listen.port) == ("127.0.0.1", 40001)
    assert cfg.paths.spool == work / "spool" and cfg.paths.output == work / "rtstruct"
    assert cfg.paths.models == EMBEDDED_CONFIG.parent / "models"
    assert cfg.database.url == f"sqlite:///{work / 'aircon.db'}"
    assert cfg.queue.path == work / "queue.db"
    assert {(d.ae_title, d.host, d.port) for d in cfg.destinations.values()} == {
        ("PLANNING", "127.0.0.1", 40002)
    }
    assert "DEMO" in {p.ae_title for p in cfg.peers}
    # A mapping merges into its section, anything else replaces it.
    assert cfg.assembly.series_quiet_s == 1.5 and cfg.assembly.study_timeout_s == 1800
    assert cfg.rules == ()


def test_a_given_config_keeps_its_destination_names_and_drops_their_tls(tmp_path: Path) -> None:
    raw = yaml.safe_load(EMBEDDED_CONFIG.read_text())
    raw["destinations"] = {
        "tps": {"ae_title": "TPS", "host": "10.0.0.9", "port": 104, "tls": {"ca_certificates": "x"}}
    }
    raw["rules"] = []
    source = tmp_path / "site" / "config.yaml"
    source.parent.mkdir()
    source.write_text(yaml.safe_dump(raw))
    cfg = load_config(write_config(tmp_path / "work", 40001, source=source, destination_port=5))
    ((name, dest),) = cfg.destinations.items()
    assert (name, dest.ae_title, dest.host, dest.port, dest.tls) == (
        "tps",
        "TPS",
        "127.0.0.1",
        5,
        None,
    )
    assert cfg.paths.models == source.parent / "models"  # relative to the given config


def test_ports_chosen_together_are_different() -> None:
    from gateway.demo.launcher import free_ports

    ports = free_ports(40)
    assert len(set(ports)) == 40 and all(1024 <= p <= 65535 for p in ports)
