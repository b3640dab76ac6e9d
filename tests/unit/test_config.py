"""config.yaml and model.yaml: the shipped config loads; every invalid key is reported by path."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gateway.config import load_config, parse_config
from gateway.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
MODEL_YAML = {
    "name": "pelvis-demo",
    "kind": "nnunet",
    "version": "0.1",
    "nnunet": {"folder": "nnunet", "folds": [0]},
    "inputs": [{"name": "T2", "select": {"Modality": "^MR$"}}],
    "labels": {1: {"name": "Bladder", "color": [255, 255, 0]}},
}


def make_model(models: Path, name: str = "pelvis-demo", spec: dict | None = None) -> Path:
    """A model folder with nnU-Net's trained-model layout, holding small dummy files."""
    d = models / name
    (d / "nnunet" / "fold_0").mkdir(parents=True)
    (d / "nnunet" / "plans.json").write_text('{"plans": 1}')
    (d / "nnunet" / "dataset.json").write_text('{"dataset": 1}')
    (d / "nnunet" / "fold_0" / "checkpoint_final.pth").write_bytes(b"weights")
    (d / "model.yaml").write_text(yaml.safe_dump({**MODEL_YAML, "name": name, **(spec or {})}))
    return d


PELVIS_LABELS = {
    1: {"name": "Prostate", "color": [255, 0, 0]},
    2: {"name": "Bladder", "color": [255, 255, 0]},
    3: {"name": "Rectum", "color": [0, 200, 255]},
}


@pytest.fixture
def repo_config(tmp_path: Path) -> Path:
    """The repository's config.yaml next to a fake models folder with the models it names."""
    shutil.copy(REPO / "config.yaml", tmp_path / "config.yaml")
    make_model(tmp_path / "models")
    make_model(tmp_path / "models", "pelvis-dixon-demo", {"labels": PELVIS_LABELS})
    prostate = {1: {"name": "prostate", "color": [1, 1, 1]}}
    make_model(tmp_path / "models", "taps", {"labels": prostate})
    return tmp_path / "config.yaml"


def test_repo_config_loads_with_paths_resolved_and_model_hashed(repo_config: Path) -> None:
    cfg = load_config(repo_config)
    base = repo_config.parent
    assert cfg.ae_title == "AIRCON"
    assert cfg.listen.port == 11112
    assert {p.ae_title for p in cfg.peers} >= {"STORESCU", "ECHOSCU"}
    assert cfg.paths.spool == base / "var" / "spool"
    assert cfg.paths.models == base / "models"
    assert cfg.database.url == f"sqlite:///{base / 'var' / 'aircon.db'}"
    assert cfg.queue.path == base / "var" / "queue.db"
    assert [r.name for r in cfg.rules] == ["phantom-demo", "prostate-mr"]
    assert cfg.rules[0].models == ("pelvis-dixon-demo", "pelvis-demo")
    assert cfg.rules[0].prefer["Prostate"] == "pelvis-dixon-demo"
    model = cfg.models["pelvis-demo"]
    assert model.trained_model_folder == base / "models" / "pelvis-demo" / "nnunet"
    # The hash covers plans, dataset and checkpoint: changing the weights changes it.
    before = model.weights_sha256
    assert len(before) == 64
    ckpt = base / "models" / "pelvis-demo" / "nnunet" / "fold_0" / "checkpoint_final.pth"
    ckpt.write_bytes(b"other weights")
    assert load_config(repo_config).models["pelvis-demo"].weights_sha256 != before


def test_weights_hash_is_over_the_named_files(tmp_path: Path) -> None:
    make_model(tmp_path / "models")
    cfg = parse_config({}, tmp_path)
    digest = hashlib.sha256()
    for name, data in (
        ("plans.json", b'{"plans": 1}'),
        ("dataset.json", b'{"dataset": 1}'),
        ("checkpoint_final.pth", b"weights"),
    ):
        digest.update(name.encode())
        digest.update(data)
    assert cfg.models["pelvis-demo"].weights_sha256 == digest.hexdigest()


def test_config_is_frozen(repo_config: Path) -> None:
    cfg = load_config(repo_config)
    with pytest.raises(Exception, match="frozen"):
        cfg.ae_title = "OTHER"  # type: ignore[misc]


def test_missing_checkpoint_is_reported_with_the_model_path(tmp_path: Path) -> None:
    d = make_model(tmp_path / "models")
    (d / "nnunet" / "fold_0" / "checkpoint_final.pth").unlink()
    with pytest.raises(ConfigError) as info:
        parse_config({}, tmp_path)
    assert [p for p, _ in info.value.problems] == ["pelvis-demo/model.yaml:nnunet.folds"]
    assert "checkpoint" in info.value.problems[0][1]


def test_invalid_model_yaml_values_are_reported_by_path(tmp_path: Path) -> None:
    make_model(tmp_path / "models", spec={"labels": {0: {"name": "bg", "color": [0, 0, 300]}}})
    with pytest.raises(ConfigError) as info:
        parse_config({}, tmp_path)
    assert ("pelvis-demo/model.yaml:labels[0].color", "colour components must be 0-255") in (
        info.value.problems
    )


def test_label_zero_is_rejected_as_background(tmp_path: Path) -> None:
    make_model(tmp_path / "models", spec={"labels": {0: {"name": "bg", "color": [0, 0, 0]}}})
    with pytest.raises(ConfigError) as info:
        parse_config({}, tmp_path)
    assert info.value.problems == [
        ("pelvis-demo/model.yaml:labels", "label values must be 1-255 (0 is background)")
    ]


def test_unknown_dicom_keyword_in_selector_is_rejected(tmp_path: Path) -> None:
    raw = {
        "rules": [
            {
                "name": "r",
                "models": ["m"],
                "destinations": ["d"],
                "match": {"series": {"Modalty": "MR"}},
            }
        ]
    }
    with pytest.raises(ConfigError) as info:
        parse_config(raw, tmp_path)
    assert any(
        p == "rules[0].match.series" and "not a DICOM keyword" in r for p, r in info.value.problems
    )


def test_pre_release_single_model_key_is_rejected(tmp_path: Path) -> None:
    make_model(tmp_path / "models")
    raw = {
        "destinations": {"planning": {"ae_title": "TPS", "host": "127.0.0.1", "port": 104}},
        "rules": [{"name": "r", "model": "pelvis-demo", "destinations": ["planning"]}],
    }
    with pytest.raises(ConfigError) as info:
        parse_config(raw, tmp_path)
    assert ("rules[0].model", "Extra inputs are not permitted") in info.value.problems
    assert ("rules[0].models", "Field required") in info.value.problems


def test_duplicate_rule_names_and_unknown_models_are_reported_by_path(tmp_path: Path) -> None:
    make_model(tmp_path / "models")
    rule = {"name": "r", "models": ["pelvis-demo"], "destinations": ["planning"]}
    raw = {
        "destinations": {"planning": {"ae_title": "TPS", "host": "127.0.0.1", "port": 104}},
        "rules": [rule, {**rule, "models": ["pelvis-demo", "absent"]}],
    }
    with pytest.raises(ConfigError) as info:
        parse_config(raw, tmp_path)
    assert info.value.problems == [
        ("rules[1].models[1]", "unknown model 'absent' (known: pelvis-demo)")
    ]
    raw["rules"] = [rule, rule]
    with pytest.raises(ConfigError) as info:
        parse_config(raw, tmp_path)
    assert info.value.problems == [("rules[1].name", "duplicate rule name 'r'")]


def test_a_model_provenance_is_one_object_used_by_the_rtstruct(tmp_path: Path) -> None:
    from gateway.contour import rtstruct
    from gateway.job import Provenance

    make_model(tmp_path / "models")
    model = parse_config({}, tmp_path).models["pelvis-demo"]
    assert model.provenance == Provenance("pelvis-demo", "0.1", model.weights_sha256)
    assert model.provenance.label == "pelvis-demo 0.1"
    assert rtstruct.Provenance is Provenance


def test_unknown_top_level_key_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"ae_tilte": "X"}, tmp_path)
    assert info.value.problems[0][0] == "ae_tilte"


def test_redis_backend_requires_url(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"queue": {"backend": "redis"}}, tmp_path)
    assert info.value.problems == [("queue.url", "required when queue.backend is redis")]


def run_cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "-c", str(config), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=config.parent,
    )


def test_check_config_accepts_the_repo_config(repo_config: Path) -> None:
    res = run_cli(repo_config, "check-config")
    assert res.returncode == 0, res.stderr
    assert "config OK: AE AIRCON on 127.0.0.1:11112, 2 rule(s), 3 model(s)" in res.stdout
    assert "model pelvis-demo 0.1 sha256" in res.stdout


def test_check_config_reports_each_invalid_key_in_one_run(repo_config: Path) -> None:
    raw = yaml.safe_load(repo_config.read_text())
    raw["ae_title"] = "A_VERY_LONG_AE_TITLE"  # 20 characters
    raw["listen"]["port"] = 70000
    raw["rules"] = [
        {"name": "one", "models": ["no-such-model"], "destinations": ["planning"]},
        {
            "name": "two",
            "models": ["pelvis-demo"],
            "destinations": ["nowhere"],
            "match": {"calling_ae": "SCANNER("},
        },
    ]
    repo_config.write_text(yaml.safe_dump(raw))

    res = run_cli(repo_config, "check-config")
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    lines = res.stderr.splitlines()
    assert "invalid configuration" in lines[0]

    def line_for(path: str) -> str:
        found = [ln for ln in lines if ln.strip().startswith(f"{path}:")]
        assert found, f"{path} not reported in:\n{res.stderr}"
        return found[0]

    assert "1-16 characters, got 20" in line_for("ae_title")
    assert "65535" in line_for("listen.port")
    assert "does not compile" in line_for("rules[1].match.calling_ae")
    known = "(known: pelvis-demo, pelvis-dixon-demo, taps)"
    assert f"unknown model 'no-such-model' {known}" in line_for("rules[0].models[0]")
    assert "unknown destination 'nowhere'" in line_for("rules[1].destinations[0]")
    assert "(5 problem(s))" in lines[0]


def test_check_config_on_missing_file_exits_2(tmp_path: Path) -> None:
    res = run_cli(tmp_path / "absent.yaml", "check-config")
    assert res.returncode == 2
    assert "file not found" in res.stderr
    assert "Traceback" not in res.stderr


def test_a_clash_between_models_without_preference_is_reported(repo_config: Path) -> None:
    raw = yaml.safe_load(repo_config.read_text())
    del raw["rules"][0]["prefer"]
    with pytest.raises(ConfigError) as info:
        parse_config(raw, repo_config.parent)
    (problem,) = info.value.problems
    assert problem[0] == "rules[0].prefer"
    assert "'Bladder' is made by pelvis-demo and pelvis-dixon-demo" in problem[1]


def test_the_shipped_config_and_models_check_out() -> None:
    """The repository's own config.yaml with its real models (TAPS installed)."""
    res = run_cli(REPO / "config.yaml", "check-config")
    assert res.returncode == 0, res.stderr
    for name in ("pelvis-demo", "pelvis-dixon-demo", "taps"):
        assert f"model {name} " in res.stdout
    assert "inputs: T2 (primary), DixonWater" in res.stdout
    assert "structure set: Prostate <- taps" in res.stdout  # TAPS' 'prostate', clinic name
