"""What every segmenter shares: the grid its channels lie on, input checks, output checks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from gateway.errors import ModelError
from gateway.grid import Grid
from gateway.segment.spec import ModelSpec, SegmentationConfig

__all__ = ["Grid", "as_grid", "check_output", "resolve_device", "stack_channels"]


def as_grid(grid: Grid | Sequence[float]) -> Grid:
    """A :class:`Grid`; a bare ``(z, y, x)`` spacing means an axial grid at the origin."""
    if isinstance(grid, Grid):
        return grid
    z, y, x = (float(v) for v in grid)
    return Grid((x, y, z))


def stack_channels(spec: ModelSpec, channels: Sequence[np.ndarray], grid: Grid) -> np.ndarray:
    """The channels as one float32 array (c, z, y, x), after checking the array contract."""
    expected = len(spec.inputs)
    if len(channels) != expected:
        raise ModelError(f"model {spec.name} takes {expected} channel(s), got {len(channels)}")
    shapes = {np.shape(c) for c in channels}
    if len(shapes) != 1 or len(next(iter(shapes))) != 3:
        raise ModelError(f"channels must be 3-D (z, y, x) arrays of one shape, got {shapes}")
    spacing = grid.spacing
    if len(spacing) != 3 or not all(s > 0 for s in spacing):
        raise ModelError(f"spacing must be three positive mm values, got {grid.spacing_zyx}")
    data = np.stack([np.asarray(c, dtype=np.float32) for c in channels])
    if not np.isfinite(data).all():
        raise ModelError("input contains NaN or infinite values")
    return data


def check_output(spec: ModelSpec, seg: Any, shape: tuple[int, ...]) -> np.ndarray:
    """The model's label map as uint8 after checking shape and label values."""
    seg = np.asarray(seg)
    if seg.shape != tuple(shape):
        raise ModelError(
            f"model {spec.name} returned shape {tuple(seg.shape)}, expected {tuple(shape)}"
        )
    if seg.dtype.kind == "f" and not np.array_equal(seg, np.rint(seg)):
        raise ModelError(f"model {spec.name} returned non-integer labels")
    unknown = set(np.unique(seg).astype(int).tolist()) - {0, *spec.labels}
    if unknown:
        raise ModelError(f"model {spec.name} returned unknown labels {sorted(unknown)[:10]}")
    return seg.astype(np.uint8, copy=False)


def resolve_device(cfg: SegmentationConfig) -> str:
    """``cuda``, ``cuda:N`` or ``cpu`` for ``cfg.device``; ``auto`` asks torch when it is
    installed. ``cuda:N`` must name a device this process sees."""
    want = cfg.device
    if want == "cpu":
        return "cpu"
    try:
        import torch

        count = int(torch.cuda.device_count()) if torch.cuda.is_available() else 0
    except ImportError:
        count = 0
    if want.startswith("cuda") and not count:
        raise ModelError(f"segmentation.device is {want!r} but no CUDA device is available")
    index = want.partition(":")[2]
    if index and int(index) >= count:
        raise ModelError(
            f"segmentation.device is {want!r} but this process sees {count} CUDA device(s)"
        )
    if want.startswith("cuda"):
        return want
    return "cuda" if count else "cpu"
