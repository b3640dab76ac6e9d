"""Segmentation: the :class:`Segmenter` seam and a per-process cache of warm models.

Importing this package does not import torch or nnU-Net; :class:`NnUNetSegmenter` does that on
first use. Model kinds: ``nnunet`` (:class:`NnUNetSegmenter`), ``command`` and ``python``
(:mod:`gateway.segment.external`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from gateway.segment.base import Grid
from gateway.segment.external import CommandSegmenter, PythonSegmenter
from gateway.segment.nnunet import NnUNetSegmenter
from gateway.segment.spec import ModelSpec, SegmentationConfig

logger = logging.getLogger(__name__)

__all__ = [
    "CommandSegmenter",
    "Grid",
    "NnUNetSegmenter",
    "PythonSegmenter",
    "Segmenter",
    "SegmenterCache",
    "make_segmenter",
]


@runtime_checkable
class Segmenter(Protocol):
    """A loaded model that turns image volumes into a label map.

    Array contract of :meth:`predict`:

    - ``channels``: one array per model input, in the model's channel order
      (``ModelSpec.inputs``). Each is float32 of shape ``(z, y, x)`` -- the order of
      ``SimpleITK.GetArrayFromImage`` -- with slices ascending along the slice normal
      ``cross(row direction, column direction)``. All channels lie on one grid.
    - ``spacing_zyx``: voxel spacing in mm in the same ``(z, y, x)`` order (the reverse of
      ``SimpleITK.Image.GetSpacing()``).
    - returns: uint8 array of the same shape holding the model's label values
      (``ModelSpec.labels`` keys), 0 for background.

    Failures raise :class:`gateway.errors.ModelError`. Implementations are safe to call from
    several threads; calls may be serialised.
    """

    def predict(
        self, channels: Sequence[np.ndarray], grid: Grid | Sequence[float]
    ) -> np.ndarray: ...

    def warm_up(self) -> None:
        """Load the model now rather than on the first :meth:`predict` (may do nothing)."""
        ...


SegmenterFactory = Callable[[ModelSpec, SegmentationConfig], Segmenter]


def make_segmenter(spec: ModelSpec, cfg: SegmentationConfig) -> Segmenter:
    """The segmenter for a model's kind (not loaded yet)."""
    kinds: dict[str, SegmenterFactory] = {
        "nnunet": NnUNetSegmenter,
        "command": CommandSegmenter,
        "python": PythonSegmenter,
    }
    return kinds[spec.kind](spec, cfg)


class SegmenterCache:
    """One segmenter per model name for the life of the process, so models stay warm.

    A model whose spec changed (new weights, new settings) gets a new segmenter.
    """

    def __init__(self, cfg: SegmentationConfig, factory: SegmenterFactory = make_segmenter) -> None:
        self._cfg = cfg
        self._factory = factory
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[ModelSpec, Segmenter]] = {}

    def get(self, spec: ModelSpec) -> Segmenter:
        """The segmenter for ``spec``, created on first request (not loaded until used)."""
        with self._lock:
            entry = self._entries.get(spec.name)
            if entry is not None and entry[0] == spec:
                return entry[1]
            if entry is not None:
                logger.info("model %s changed; replacing its segmenter", spec.name)
            segmenter = self._factory(spec, self._cfg)
            self._entries[spec.name] = (spec, segmenter)
            return segmenter
