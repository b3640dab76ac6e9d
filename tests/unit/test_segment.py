"""The Segmenter seam: cache semantics and input checks that need no model weights."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from gateway.config import ModelSpec, SegmentationConfig
from gateway.errors import ModelError
from gateway.segment import NnUNetSegmenter, Segmenter, SegmenterCache


def _spec(tmp_path: Path, name: str = "m", version: str = "1") -> ModelSpec:
    return ModelSpec.model_validate(
        {
            "name": name,
            "kind": "nnunet",
            "version": version,
            "nnunet": {"folder": "nnunet", "folds": ["all"]},
            "inputs": [{"name": "T2", "select": {"Modality": "^MR$"}}],
            "labels": {1: {"name": "Prostate", "color": [255, 0, 0]}},
            "path": tmp_path,
        }
    )


class _Counting:
    made: list[str] = []

    def __init__(self, spec: ModelSpec, cfg: SegmentationConfig) -> None:
        self.spec = spec
        _Counting.made.append(spec.name)

    def predict(
        self, channels: Sequence[np.ndarray], spacing_zyx: tuple[float, float, float]
    ) -> np.ndarray:
        return np.zeros(channels[0].shape, np.uint8)

    def warm_up(self) -> None:
        pass


def test_nnunet_segmenter_satisfies_the_protocol(tmp_path: Path) -> None:
    assert isinstance(NnUNetSegmenter(_spec(tmp_path), SegmentationConfig()), Segmenter)


def test_cache_creates_one_segmenter_per_model_across_threads(tmp_path: Path) -> None:
    _Counting.made = []
    cache = SegmenterCache(SegmentationConfig(), factory=_Counting)
    spec = _spec(tmp_path)
    got: list[Segmenter] = []
    threads = [threading.Thread(target=lambda: got.append(cache.get(spec))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert _Counting.made == ["m"]
    assert all(s is got[0] for s in got)
    assert cache.get(_spec(tmp_path, name="other")) is not got[0]


def test_cache_replaces_a_segmenter_when_the_model_changes(tmp_path: Path) -> None:
    cache = SegmenterCache(SegmentationConfig(), factory=_Counting)
    first = cache.get(_spec(tmp_path, version="1"))
    assert cache.get(_spec(tmp_path, version="1")) is first
    assert cache.get(_spec(tmp_path, version="2")) is not first


@pytest.mark.parametrize(
    ("channels", "spacing", "reason"),
    [
        ([], (3.0, 1.0, 1.0), "takes 1 channel"),
        ([np.zeros((4, 8, 8)), np.zeros((4, 8, 8))], (3.0, 1.0, 1.0), "takes 1 channel"),
        ([np.zeros((8, 8))], (3.0, 1.0, 1.0), "3-D"),
        ([np.zeros((4, 8, 8))], (0.0, 1.0, 1.0), "spacing"),
        ([np.full((4, 8, 8), np.nan)], (3.0, 1.0, 1.0), "NaN"),
    ],
)
def test_bad_input_is_a_model_error_before_loading(
    tmp_path: Path, channels: list[np.ndarray], spacing: tuple[float, float, float], reason: str
) -> None:
    seg = NnUNetSegmenter(_spec(tmp_path), SegmentationConfig(device="cpu"))
    with pytest.raises(ModelError, match=reason):
        seg.predict(channels, spacing)


def test_missing_model_folder_is_a_readable_model_error(tmp_path: Path) -> None:
    seg = NnUNetSegmenter(_spec(tmp_path, name="ghost"), SegmentationConfig(device="cpu"))
    with pytest.raises(ModelError, match="cannot load model ghost"):
        seg.warm_up()
