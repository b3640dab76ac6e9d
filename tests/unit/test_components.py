"""The model warm-up records each model's state where the console reads it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gateway.app import Gateway
from gateway.config import GatewayConfig
from gateway.pipeline import Pipeline
from tests.unit.test_pipeline_unit import RecordingDispatcher


class Cache:
    """The segmenter cache: model 'broken' fails to load."""

    def get(self, spec: Any) -> Any:
        return self if spec.name != "broken" else Broken()

    def warm_up(self) -> None:
        pass


class Broken:
    def warm_up(self) -> None:
        raise FileNotFoundError("weights checkpoint_final.pth missing")


def test_warm_up_records_each_model_ok_or_failed_with_why(tmp_path: Path) -> None:
    def model(name: str) -> dict[str, Any]:
        return {
            "name": name,
            "kind": "nnunet",
            "version": "1",
            "nnunet": {"folder": "nnunet"},
            "inputs": [{"name": "T2", "select": {"Modality": "^MR$"}}],
            "labels": {1: {"name": "Bladder", "color": [255, 255, 0]}},
        }

    cfg = GatewayConfig.model_validate(
        {
            "destinations": {"planning": {"ae_title": "TPS", "host": "127.0.0.1", "port": 104}},
            "paths": {"spool": tmp_path / "spool", "output": tmp_path / "out"},
            "database": {"url": f"sqlite:///{tmp_path / 'aircon.db'}"},
            "queue": {"path": tmp_path / "queue.db"},
            "rules": [
                {
                    "name": "mr",
                    "match": {"series": {"Modality": "^MR$"}},
                    "models": ["pelvis", "broken"],
                    "prefer": {"Bladder": "pelvis"},
                    "destinations": ["planning"],
                }
            ],
            "models": {"pelvis": model("pelvis"), "broken": model("broken")},
        }
    )
    gw = Gateway(cfg)
    gw._pipeline = Pipeline(cfg, gw.store, RecordingDispatcher(), segmenters=Cache())
    gw._warm_models()
    parts = gw.store.components()
    assert (parts["model:pelvis"].state, parts["model:pelvis"].detail) == ("ok", "")
    assert parts["model:broken"].state == "failed"
    assert parts["model:broken"].detail == (
        "FileNotFoundError: weights checkpoint_final.pth missing"
    )
    assert {parts[m].owner for m in ("model:pelvis", "model:broken")} == {gw.owner}
