"""The run stage: waiting for a model another job is using is 'wait', not 'segment'."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset

from gateway.imaging import Volume
from gateway.inference import ModelSlots, run_models
from gateway.job import ModelState
from tests.unit.test_pipeline_unit import make_config


class SlowSegmenter:
    def __init__(self, seconds: float):
        self.seconds = seconds

    def predict(self, channels, grid):  # noqa: ANN001, ANN201
        time.sleep(self.seconds)
        return (channels[0] > 0).astype(np.uint8)


class Segmenters:
    def __init__(self, segmenter: SlowSegmenter):
        self.segmenter = segmenter

    def get(self, spec):  # noqa: ANN001, ANN201
        return self.segmenter


def _volume() -> Volume:
    image = sitk.GetImageFromArray(np.ones((4, 8, 8), dtype=np.float32))
    image.SetSpacing((0.5, 0.5, 3.0))
    header = Dataset()
    header.SeriesInstanceUID, header.FrameOfReferenceUID = "1.2.3", "1.2.9"
    return Volume(image=image, datasets=(header,) * 4)


def test_time_queued_behind_another_job_on_the_model_is_wait_not_segment(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    slots = ModelSlots()
    busy = threading.Event()

    def other_job() -> None:  # another study's job holds the warm model for 0.6 s
        with slots("pelvis"):
            busy.set()
            time.sleep(0.6)

    threading.Thread(target=other_job).start()
    busy.wait()
    run = run_models(
        {"pelvis": ("1.2.3",)},
        cfg.models,
        lambda uid: _volume(),
        Segmenters(SlowSegmenter(0.2)),
        slots,
    )
    outcome = run.outcomes["pelvis"]
    assert outcome.state is ModelState.DONE
    assert 0.45 <= outcome.wait_s <= 1.5
    assert 0.15 <= outcome.segment_s <= 0.5
