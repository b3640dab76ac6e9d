"""An nnU-Net v2 trained-model folder as a :class:`gateway.segment.Segmenter`.

The predictor is built once (``initialize_from_trained_model_folder``) and then reused for
every case through ``predict_single_npy_array``: no files, no worker processes.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from gateway.errors import ModelError
from gateway.segment.base import Grid, as_grid, check_output, resolve_device, stack_channels
from gateway.segment.spec import ModelSpec, SegmentationConfig

logger = logging.getLogger(__name__)

# nnU-Net reads these when its modules are imported or its workers start; one process, no pools.
_NNUNET_ENV = {"nnUNet_def_n_proc": "1", "nnUNet_n_proc_DA": "0", "nnUNet_compile": "false"}


class NnUNetSegmenter:
    """Runs one nnU-Net model; see :class:`gateway.segment.Segmenter` for the array contract.

    Loading happens once, on :meth:`warm_up` or the first :meth:`predict`. ``cfg.device``
    ``auto`` picks CUDA when available, else CPU with ``cfg.threads`` threads.
    """

    def __init__(self, spec: ModelSpec, cfg: SegmentationConfig) -> None:
        self.spec = spec
        self._cfg = cfg
        self._lock = threading.Lock()
        self._predictor: Any = None
        self._warm = False

    def warm_up(self) -> None:
        """Load the model and run it once on noise of one patch, so that the first study does
        not pay for lazy initialisation (about 5 s on CPU)."""
        with self._lock:
            predictor = self._load()
            if self._warm:
                return
            cm = predictor.configuration_manager
            rng = np.random.default_rng(0)
            data = rng.random((len(self.spec.inputs), *cm.patch_size), dtype=np.float32)
            start = time.perf_counter()
            try:
                predictor.predict_single_npy_array(
                    data, {"spacing": [float(s) for s in cm.spacing]}, None, None, False
                )
            except Exception as exc:
                raise ModelError(f"model {self.spec.name} failed its warm-up run: {exc}") from exc
            self._warm = True
            logger.info("model %s warm in %.1f s", self.spec.name, time.perf_counter() - start)

    def predict(self, channels: Sequence[np.ndarray], grid: Grid | Sequence[float]) -> np.ndarray:
        spacing_zyx = as_grid(grid).spacing_zyx
        data = stack_channels(self.spec, channels, as_grid(grid))
        with self._lock:
            predictor = self._load()
            start = time.perf_counter()
            try:
                seg = predictor.predict_single_npy_array(
                    data, {"spacing": [float(s) for s in spacing_zyx]}, None, None, False
                )
            except Exception as exc:
                raise ModelError(
                    f"model {self.spec.name} failed on input of shape {data.shape[1:]} "
                    f"spacing {tuple(spacing_zyx)}: {type(exc).__name__}: {exc}"
                ) from exc
        logger.info(
            "model %s segmented %s voxels in %.1f s",
            self.spec.name,
            "x".join(map(str, data.shape[1:])),
            time.perf_counter() - start,
        )
        return check_output(self.spec, seg, data.shape[1:])

    # -----------------------------------------------------------------------------------------

    def _device(self) -> Any:
        import torch

        return torch.device(resolve_device(self._cfg))

    def _load(self) -> Any:
        """Build the predictor once; the caller holds the lock."""
        if self._predictor is not None:
            return self._predictor
        for key, value in _NNUNET_ENV.items():
            os.environ.setdefault(key, value)
        start = time.perf_counter()
        try:
            import torch
            from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
        except ImportError as exc:
            raise ModelError(f"nnU-Net is not installed: {exc}") from exc
        device = self._device()
        if device.type == "cpu":
            torch.set_num_threads(self._cfg.threads)
        nn = self.spec.nnunet
        assert nn is not None, "NnUNetSegmenter needs a model of kind nnunet"
        # nnU-Net prints a notice on CPU devices: keep it off our commands' stdout (log it).
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            predictor = nnUNetPredictor(
                tile_step_size=nn.tile_step_size,
                use_gaussian=True,
                use_mirroring=nn.use_mirroring,
                perform_everything_on_device=device.type == "cuda",
                device=device,
                verbose=False,
                verbose_preprocessing=False,
                allow_tqdm=False,
            )
        if printed.getvalue().strip():
            logger.debug("nnU-Net: %s", printed.getvalue().strip())
        try:
            predictor.initialize_from_trained_model_folder(
                str(self.spec.trained_model_folder),
                use_folds=tuple(nn.folds),
                checkpoint_name=nn.checkpoint,
            )
        except Exception as exc:
            raise ModelError(
                f"cannot load model {self.spec.name} from {self.spec.trained_model_folder}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        self._check_labels(predictor.dataset_json)
        if len(predictor.configuration_manager.spacing) != 3:
            raise ModelError(f"model {self.spec.name} is not a 3-D configuration")
        logger.info(
            "loaded model %s %s on %s in %.1f s",
            self.spec.name,
            self.spec.version,
            device,
            time.perf_counter() - start,
        )
        self._predictor = predictor
        return predictor

    def _check_labels(self, dataset_json: dict[str, Any]) -> None:
        values = [v for k, v in dataset_json.get("labels", {}).items() if k != "background"]
        if not all(isinstance(v, int) for v in values):
            raise ModelError(f"model {self.spec.name}: region-based labels are not supported")
        trained = set(values)
        declared = set(self.spec.labels)
        if trained != declared:
            raise ModelError(
                f"model {self.spec.name}: model.yaml labels {sorted(declared)} do not match the "
                f"trained labels {sorted(trained)}"
            )
        channels = dataset_json.get("channel_names", {})
        if len(channels) != len(self.spec.inputs):
            raise ModelError(
                f"model {self.spec.name}: model.yaml has {len(self.spec.inputs)} input(s), the "
                f"trained model {len(channels)}"
            )
