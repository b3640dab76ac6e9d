"""Adapter for the TAPS prostate model (PyPI ``lavlab-taps`` 1.1.2, MIT).

TAPS ships its network as ``taps/resources/model_v1.onnx`` and exposes one entry point,
``taps.segment(image_path, output_path, checkpoint, device, exact)``, which works on NIfTI files:
it loads the image with MONAI (reoriented to RAS, resampled to 0.8 x 0.8 x 3 mm, z-scored),
runs the ONNX network by sliding window, blurs and inverts the logits back onto the input
grid, thresholds them, runs its own QC (warnings in the ``taps.inference`` logger; it keeps only
the largest 3D component) and writes a uint8 mask with nibabel.

This module does not re-implement any of that. It writes the channel to a NIfTI file with
SimpleITK in a temporary directory, calls ``taps.segment`` and reads the mask back with
SimpleITK, checking that it lies on the input grid. SimpleITK writes the LPS geometry as a
RAS NIfTI affine and reads the nibabel-written affine back the same way, so the returned array
is on the input voxels, in the same ``(z, y, x)`` order.

Install (CPU, without the ``onnxruntime-gpu`` TAPS declares)::

    pip install --no-deps lavlab-taps==1.1.2
    pip install monai nibabel onnxruntime scipy torch==<the torch already installed>

Cost: almost all of a call is the ONNX sliding window (9 windows of 128 x 128 x 32 for a
384 x 384 x 19 T2 at 0.5 x 0.5 x 3 mm); pre/post-processing and QC take a few seconds.
``taps.segment`` builds a new ``onnxruntime.InferenceSession`` on every call (about 0.2 s for the
80 MB model, so not worth working around), with onnxruntime's default thread count (the
physical cores); the ``threads`` option only sets torch's threads (MONAI pre/post-processing).
Importing ``taps.inference`` (MONAI, torch, onnxruntime) takes about 10-20 s on 2 cores; call
:func:`warm_up` at start-up to pay that once. Importing it also calls ``logging.basicConfig``
(a no-op when logging is already configured).
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from gateway.errors import ModelError

logger = logging.getLogger(__name__)

# Largest allowed difference between the input grid and the grid of the mask TAPS writes: the
# NIfTI affine is stored in float32, so exact equality cannot be expected.
_ORIGIN_TOL_MM = 0.05
_DIRECTION_TOL = 1e-4


class NoProstateFound(ModelError):
    """TAPS produced an empty mask (its ``BlankMaskError``)."""


def _inference() -> Any:
    """``taps.inference``, imported on first use (it imports torch, MONAI and onnxruntime)."""
    import taps.inference

    return taps.inference


def _set_threads(options: dict[str, Any]) -> None:
    threads = options.get("threads")
    if threads:
        import torch

        torch.set_num_threads(int(threads))


def warm_up(**options: Any) -> None:
    """Import TAPS and its heavy dependencies now, so the first study does not pay for them.

    The ONNX session cannot be kept warm: ``taps.segment`` creates a new one on every call.
    """
    start = time.perf_counter()
    _inference()
    _set_threads(options)
    logger.info("TAPS imported in %.1f s", time.perf_counter() - start)


def segment(channels: list[np.ndarray], grid: Any, **options: Any) -> np.ndarray:
    """Segment the prostate on a T2 axial volume.

    :param channels: ``[t2]``, a float32 array ``(z, y, x)`` (``SimpleITK.GetArrayFromImage``
        order) on ``grid``.
    :param grid: the volume's geometry: ``spacing``, ``origin``, ``direction`` (SimpleITK
        conventions) and ``to_image(array) -> SimpleITK.Image``.
    :param options: ``device`` (default ``"cpu"``), ``threads`` (torch threads, optional).
    :return: uint8 array of the input's shape, 1 = prostate, 0 = background.
    :raises NoProstateFound: TAPS found no prostate.
    :raises ModelError: the mask TAPS wrote is not on the input grid.
    """
    if len(channels) != 1:
        raise ModelError(f"TAPS takes one channel (T2), got {len(channels)}")
    t2 = np.asarray(channels[0], dtype=np.float32)
    if t2.ndim != 3:
        raise ModelError(f"TAPS needs a 3D volume, got shape {t2.shape}")
    taps = _inference()
    _set_threads(options)

    with tempfile.TemporaryDirectory(prefix="taps-") as tmp:
        image_path = Path(tmp) / "t2.nii"
        mask_path = Path(tmp) / "mask.nii"
        image = grid.to_image(t2)
        sitk.WriteImage(image, str(image_path))
        start = time.perf_counter()
        try:
            written = taps.segment(
                image_path,
                mask_path,
                checkpoint=None,  # the model bundled in the wheel
                device=options.get("device", "cpu"),
                exact=True,  # keep mask_path even when TAPS' QC finds the mask abnormal
            )
        except taps.BlankMaskError as exc:
            raise NoProstateFound("TAPS found no prostate") from exc
        logger.info(
            "TAPS segmented %s voxels in %.1f s",
            "x".join(map(str, t2.shape)),
            time.perf_counter() - start,
        )
        mask = sitk.ReadImage(str(written))

    _check_same_grid(mask, image)
    return (sitk.GetArrayFromImage(mask) > 0).astype(np.uint8)


def _check_same_grid(mask: sitk.Image, image: sitk.Image) -> None:
    """Raise unless ``mask`` covers exactly the voxels of ``image`` (same size and geometry)."""
    if mask.GetSize() != image.GetSize():
        raise ModelError(f"TAPS mask size {mask.GetSize()} differs from input {image.GetSize()}")
    origin_err = float(np.max(np.abs(np.subtract(mask.GetOrigin(), image.GetOrigin()))))
    direction_err = float(np.max(np.abs(np.subtract(mask.GetDirection(), image.GetDirection()))))
    spacing_err = float(np.max(np.abs(np.subtract(mask.GetSpacing(), image.GetSpacing()))))
    if origin_err > _ORIGIN_TOL_MM or direction_err > _DIRECTION_TOL or spacing_err > 1e-3:
        raise ModelError(
            "TAPS mask is not on the input grid "
            f"(origin off by {origin_err:.3g} mm, direction by {direction_err:.3g}, "
            f"spacing by {spacing_err:.3g} mm)"
        )
