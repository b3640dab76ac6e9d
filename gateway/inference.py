"""Run a job's models: read each model's input series once, resample them onto the model's
primary grid, then run the models one after another, each kept warm by the
:class:`~gateway.segment.SegmenterCache`.

A model is used by one job at a time in a process (``ModelSlots``); the time a job waits for
another job's use of the same model is recorded as ``wait_s``, apart from the model's own run
(``segment_s``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from gateway.errors import PermanentError
from gateway.failpoints import CrashPoints
from gateway.imaging import Volume, channels_on, labels_onto
from gateway.job import ModelOutcome, ModelState, Provenance
from gateway.segment.base import Grid
from gateway.segment.spec import ModelSpec

log = logging.getLogger(__name__)


class ModelSlots:
    """One lock per model name: a warm model serves one job at a time in this process."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}

    def __call__(self, model: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(model, threading.Lock())


@dataclass
class ModelsRun:
    """What the models made: label maps on the reference series, and each model's outcome."""

    reference: Volume | None = None
    label_maps: dict[str, np.ndarray] = field(default_factory=dict)
    outcomes: dict[str, ModelOutcome] = field(default_factory=dict)


def provenance(model: ModelSpec) -> Provenance:
    return model.provenance


def run_models(
    plan: Mapping[str, Sequence[str]],
    models: Mapping[str, ModelSpec],
    read: Callable[[str], Volume],
    segmenters: object,
    slots: ModelSlots,
    *,
    crash: CrashPoints | None = None,
    after_volumes: Callable[[], None] = lambda: None,
) -> ModelsRun:
    """Run every model of ``plan`` (model -> series UIDs per channel) on its inputs.

    ``read`` turns a series UID into a volume (called once per series). A model whose inputs
    cannot be read or that fails gets a failed outcome; the others still run. The first model
    that ran sets the reference series; later models' label maps are moved onto it.
    """
    crash = crash or CrashPoints()
    volumes: dict[str, Volume] = {}

    def volume(uid: str) -> Volume:
        if uid not in volumes:
            volumes[uid] = read(uid)
        return volumes[uid]

    out = ModelsRun()
    inputs: dict[str, tuple[Volume, list[np.ndarray], float]] = {}
    for name, series in plan.items():
        t0 = time.perf_counter()
        try:
            primary, arrays = channels_on([volume(u) for u in series], models[name].primary_index)
        except PermanentError as exc:
            out.outcomes[name] = ModelOutcome(state=ModelState.FAILED, reason=str(exc))
            log.warning("inputs of model %s unusable: %s", name, exc)
            continue
        inputs[name] = (primary, arrays, time.perf_counter() - t0)
    after_volumes()
    for name, (primary, arrays, volume_s) in inputs.items():
        model = models[name]
        t0 = time.perf_counter()
        try:
            with slots(name):
                t1 = time.perf_counter()
                crash.hit("job.segment")
                label_map = segmenters.get(model).predict(  # type: ignore[attr-defined]
                    arrays, Grid.of(primary.image)
                )
            t2 = time.perf_counter()
            if out.reference is None:
                out.reference = primary
            out.label_maps[name] = labels_onto(label_map, primary, out.reference)
        except PermanentError as exc:
            out.outcomes[name] = ModelOutcome(state=ModelState.FAILED, reason=str(exc))
            log.warning("model %s failed: %s", name, exc)
            continue
        out.outcomes[name] = ModelOutcome(
            state=ModelState.DONE,
            provenance=provenance(model),
            input_series=tuple(plan[name]),
            volume_s=round(volume_s, 3),
            wait_s=round(t1 - t0, 3),
            segment_s=round(t2 - t1, 3),
        )
    return out
