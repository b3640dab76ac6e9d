"""The committed pelvis-demo nnU-Net model through the gateway's segmenter, and its training.

The model path mirrors the gateway's: phantom -> DICOM series -> SimpleITK volume -> Segmenter.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from gateway.config import ModelSpec, SegmentationConfig
from gateway.demo.phantom import dice_scores, make_phantom, write_dicom_series
from gateway.segment import NnUNetSegmenter
from gateway.segment.registry import load_model

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
MODEL_DIR = REPO / "models" / "pelvis-demo"
HELD_OUT_SEED = 4_242_424


@pytest.fixture(scope="module")
def spec() -> ModelSpec:
    return load_model(MODEL_DIR)


@pytest.fixture(scope="module")
def segmenter(spec: ModelSpec) -> NnUNetSegmenter:
    seg = NnUNetSegmenter(spec, SegmentationConfig(device="cpu", threads=2))
    seg.warm_up()
    return seg


def _read_series(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
    return sitk.Cast(reader.Execute(), sitk.sitkFloat32)


def test_committed_model_is_a_labelled_demo(spec: ModelSpec) -> None:
    assert spec.name == "pelvis-demo" and spec.version == "1.0.0"
    assert "NOT FOR CLINICAL USE" in spec.description
    assert {k: r.name for k, r in spec.labels.items()} == {
        1: "Prostate",
        2: "Bladder",
        3: "Rectum",
    }
    selector = spec.inputs[0].select.conditions
    import re

    for description in ("t2_tse_tra", "T2 TSE tra (phantom)", "T2W_TSE_ax"):
        assert re.search(selector["SeriesDescription"], description)
    assert not re.search(selector["SeriesDescription"], "t2_tse_sag")
    assert len(spec.weights_sha256) == 64


def test_held_out_phantom_is_segmented_well(
    segmenter: NnUNetSegmenter, spec: ModelSpec, tmp_path: Path
) -> None:
    training = json.loads((MODEL_DIR / "training.json").read_text())
    assert HELD_OUT_SEED not in training["training_seeds"]
    ph = make_phantom(HELD_OUT_SEED)
    write_dicom_series(ph, tmp_path, series_description="t2_tse_tra", seed=HELD_OUT_SEED)
    volume = _read_series(tmp_path)
    pred = segmenter.predict([sitk.GetArrayFromImage(volume)], tuple(reversed(volume.GetSpacing())))
    truth = sitk.GetArrayFromImage(ph.labels)
    assert pred.dtype == np.uint8 and pred.shape == truth.shape
    dice = dice_scores(truth, pred, tuple(spec.labels))
    assert all(d >= 0.90 for d in dice.values()), dice


def test_concurrent_predictions_agree(segmenter: NnUNetSegmenter) -> None:
    ph = make_phantom(HELD_OUT_SEED + 1)
    image = sitk.GetArrayFromImage(ph.image)
    spacing = tuple(reversed(ph.image.GetSpacing()))
    results: list[np.ndarray] = []
    threads = [
        threading.Thread(target=lambda: results.append(segmenter.predict([image], spacing)))
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 2 and np.array_equal(results[0], results[1])


@pytest.mark.slow
@pytest.mark.parametrize("model", ["pelvis-demo", "pelvis-dixon-demo"])
def test_quick_training_produces_a_loadable_model(tmp_path: Path, model: str) -> None:
    out = tmp_path / "pelvis-quick"
    committed_dir = REPO / "models" / model
    cmd = [
        sys.executable,
        str(REPO / "scripts" / "train_pelvis_demo.py"),
        "--model",
        model,
        "--epochs",
        "2",
        "--iterations",
        "5",
        "--train-cases",
        "6",
        "--eval-cases",
        "1",
        "--out",
        str(out),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "held-out mean Dice" in result.stdout
    spec = load_model(out)
    # The same script made the committed model: same network, same labels, same inputs.
    plans = json.loads((out / "nnunet" / "plans.json").read_text())
    committed = json.loads((committed_dir / "nnunet" / "plans.json").read_text())
    assert plans["configurations"] == committed["configurations"]
    assert spec.labels == load_model(committed_dir).labels
    assert spec.inputs == load_model(committed_dir).inputs
    assert spec.guardrails == load_model(committed_dir).guardrails
    ckpt = out / "nnunet" / "fold_all" / "checkpoint_final.pth"
    assert ckpt.stat().st_size < 1_000_000
    ph = make_phantom(HELD_OUT_SEED)
    image = sitk.GetArrayFromImage(ph.image)
    pred = NnUNetSegmenter(spec, SegmentationConfig(device="cpu")).predict(
        [image] * len(spec.inputs), tuple(reversed(ph.image.GetSpacing()))
    )
    assert pred.shape == ph.image.GetSize()[::-1] and pred.dtype == np.uint8
    assert set(np.unique(pred)) <= {0, *spec.labels}
