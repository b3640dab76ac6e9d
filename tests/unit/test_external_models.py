"""External models behind the Segmenter interface: real subprocesses and real imports."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from gateway.config import ConfigError, SegmentationConfig
from gateway.demo.phantom import make_phantom
from gateway.errors import ModelError
from gateway.segment import Grid, Segmenter, make_segmenter
from gateway.segment.registry import load_model

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "models"
CPU = SegmentationConfig(device="cpu", threads=1)


@pytest.fixture(scope="module")
def t2() -> tuple[np.ndarray, Grid]:
    image = make_phantom(4).image
    return sitk.GetArrayFromImage(image), Grid.of(image)


def _segmenter(name: str) -> Segmenter:
    return make_segmenter(load_model(FIXTURES / name), CPU)


def test_command_model_output_is_read_back_on_the_input_grid(t2: tuple[np.ndarray, Grid]) -> None:
    array, grid = t2
    seg = _segmenter("cmd-threshold").predict([array], grid)
    assert seg.shape == array.shape and seg.dtype == np.uint8
    assert np.array_equal(seg, (array > np.percentile(array, 90)).astype(np.uint8))


def test_command_model_exit_status_and_stderr_tail_are_the_reason(
    t2: tuple[np.ndarray, Grid],
) -> None:
    with pytest.raises(ModelError) as info:
        _segmenter("cmd-exit1").predict([t2[0]], t2[1])
    assert "command exited with status 1" in str(info.value)
    assert "CUDA out of memory (simulated)" in str(info.value)


def test_command_model_that_hangs_is_killed_at_its_timeout(t2: tuple[np.ndarray, Grid]) -> None:
    start = time.monotonic()
    with pytest.raises(ModelError, match="command timed out after 3 s"):
        _segmenter("cmd-hang").predict([t2[0]], t2[1])
    assert time.monotonic() - start < 30


def test_command_model_wrong_shape_is_refused(t2: tuple[np.ndarray, Grid]) -> None:
    with pytest.raises(ModelError, match=r"returned shape \(4, 4, 4\), expected \(24, 96, 96\)"):
        _segmenter("cmd-wrong-shape").predict([t2[0]], t2[1])


def test_python_model_is_imported_once_from_its_folder_with_options(
    t2: tuple[np.ndarray, Grid],
) -> None:
    seg_a = _segmenter("py-threshold")
    seg_a.warm_up()
    array, grid = t2
    out = seg_a.predict([array], grid)
    assert np.array_equal(out, (array > np.percentile(array, 95)).astype(np.uint8))  # options
    module = seg_a._module  # type: ignore[attr-defined]
    assert module.calls == [("warm_up", "cpu"), ("segment", "cpu", grid.spacing, 1)]


def test_unknown_placeholder_in_a_command_is_a_config_error(tmp_path: Path) -> None:
    folder = tmp_path / "bad"
    folder.mkdir()
    text = (FIXTURES / "cmd-threshold" / "model.yaml").read_text().replace("{T2}", "{T1}")
    (folder / "model.yaml").write_text(text)
    with pytest.raises(ConfigError) as info:
        load_model(folder)
    assert "unknown placeholder(s) ['T1']" in str(info.value.problems)
