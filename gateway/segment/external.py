"""External models behind the :class:`gateway.segment.Segmenter` interface.

- :class:`CommandSegmenter` runs a program (a CLI, ``docker run ...``): the channels are
  written as NIfTI, the program writes the label map as NIfTI, and its exit status, run time
  and stderr tail are checked and reported.
- :class:`PythonSegmenter` calls ``module:function(channels, grid, device=..., threads=...,
  **options)`` in this process, so the model stays loaded between studies.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from gateway.errors import ModelError
from gateway.segment.base import Grid, as_grid, check_output, resolve_device, stack_channels
from gateway.segment.spec import ModelSpec, SegmentationConfig

logger = logging.getLogger(__name__)

STDERR_TAIL = 800  # characters of a failed program's stderr kept in the job's reason


def _tail(data: bytes, limit: int = STDERR_TAIL) -> str:
    text = data.decode("utf-8", "replace").strip()
    return text if len(text) <= limit else "..." + text[-limit:]


class CommandSegmenter:
    """Runs ``spec.command.args`` once per study, without a shell, in a fresh work folder."""

    def __init__(self, spec: ModelSpec, cfg: SegmentationConfig) -> None:
        if spec.command is None:
            raise ValueError("CommandSegmenter needs a model of kind command")
        self.spec = spec
        self._cfg = cfg
        self._lock = threading.Lock()

    def warm_up(self) -> None:
        """Nothing to load: the program starts for every study."""

    def predict(self, channels: Sequence[np.ndarray], grid: Grid | Sequence[float]) -> np.ndarray:
        import SimpleITK as sitk

        grid = as_grid(grid)
        data = stack_channels(self.spec, channels, grid)
        cmd = self.spec.command
        assert cmd is not None
        with self._lock, tempfile.TemporaryDirectory(prefix="aircon-model-") as tmp:
            work = Path(tmp)
            values = {
                "output": str(work / "output.nii.gz"),
                "workdir": str(work),
                "python": sys.executable,
                "model_dir": str(self.spec.path),
                "device": resolve_device(self._cfg),
                "threads": str(self._cfg.threads),
            }
            for channel, array in zip(self.spec.inputs, data, strict=True):
                path = work / f"{channel.name}.nii.gz"
                sitk.WriteImage(grid.to_image(array), str(path))
                values[channel.name] = str(path)
            args = [a.format_map(values) for a in cmd.args]
            self._run(args, work, cmd.timeout_s, cmd.env)
            out = Path(values["output"])
            if not out.is_file():
                raise ModelError(f"model {self.spec.name}: the command wrote no output {out.name}")
            try:
                image = sitk.ReadImage(str(out))
            except RuntimeError as exc:
                raise ModelError(
                    f"model {self.spec.name}: output is not readable NIfTI: {exc}"
                ) from None
            seg = sitk.GetArrayFromImage(image)
            label_map = check_output(self.spec, seg, data.shape[1:])
            if not grid.matches(image):
                raise ModelError(
                    f"model {self.spec.name}: output lies on another grid than its input "
                    f"(origin {image.GetOrigin()} vs {grid.origin})"
                )
            return label_map

    def _run(self, args: list[str], work: Path, timeout: float, env: dict[str, str]) -> None:
        start = time.perf_counter()
        try:
            proc = subprocess.Popen(
                args,
                cwd=work,
                env={**os.environ, **env},
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,  # its own process group: a timeout kills its children too
            )
        except OSError as exc:
            raise ModelError(f"model {self.spec.name}: cannot start {args[0]!r}: {exc}") from exc
        try:
            _, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            _, stderr = proc.communicate()
            raise ModelError(
                f"model {self.spec.name}: command timed out after {timeout:g} s"
                + (f"; stderr: {_tail(stderr)}" if stderr.strip() else "")
            ) from None
        seconds = time.perf_counter() - start
        if proc.returncode != 0:
            raise ModelError(
                f"model {self.spec.name}: command exited with status {proc.returncode} "
                f"after {seconds:.1f} s; stderr: {_tail(stderr) or '(empty)'}"
            )
        logger.info("model %s: command finished in %.1f s", self.spec.name, seconds)


class PythonSegmenter:
    """Calls a Python entry point; imported once, so the model stays warm in this process."""

    def __init__(self, spec: ModelSpec, cfg: SegmentationConfig) -> None:
        if spec.python is None:
            raise ValueError("PythonSegmenter needs a model of kind python")
        self.spec = spec
        self._cfg = cfg
        self._lock = threading.Lock()
        self._module: ModuleType | None = None

    def _options(self) -> dict[str, Any]:
        assert self.spec.python is not None
        defaults = {"device": resolve_device(self._cfg), "threads": self._cfg.threads}
        return {**defaults, **self.spec.python.options}

    def _load(self) -> ModuleType:
        if self._module is not None:
            return self._module
        assert self.spec.python is not None
        module_name = self.spec.python.entry.partition(":")[0]
        local = self.spec.path / (module_name.replace(".", "/") + ".py")
        try:
            if local.is_file():
                unique = f"aircon_models.{self.spec.name.replace('-', '_').replace('.', '_')}"
                found = importlib.util.spec_from_file_location(unique, local)
                assert found is not None and found.loader is not None
                module = importlib.util.module_from_spec(found)
                sys.modules[unique] = module
                found.loader.exec_module(module)
            else:
                module = importlib.import_module(module_name)
        except Exception as exc:
            raise ModelError(
                f"model {self.spec.name}: cannot import {module_name}: {type(exc).__name__}: {exc}"
            ) from exc
        self._module = module
        return module

    def _function(self) -> Callable[..., Any]:
        assert self.spec.python is not None
        name = self.spec.python.entry.partition(":")[2]
        fn = getattr(self._load(), name, None)
        if not callable(fn):
            raise ModelError(f"model {self.spec.name}: {self.spec.python.entry} is not a function")
        return fn

    def warm_up(self) -> None:
        with self._lock:
            self._function()
            warm = getattr(self._module, "warm_up", None)
            if callable(warm):
                start = time.perf_counter()
                try:
                    warm(**self._accepted(warm, self._options()))
                except Exception as exc:
                    raise ModelError(f"model {self.spec.name} failed to warm up: {exc}") from exc
                logger.info("model %s warm in %.1f s", self.spec.name, time.perf_counter() - start)

    @staticmethod
    def _accepted(fn: Callable[..., Any], options: dict[str, Any]) -> dict[str, Any]:
        params = inspect.signature(fn).parameters.values()
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
            return options
        names = {p.name for p in params}
        return {k: v for k, v in options.items() if k in names}

    def predict(self, channels: Sequence[np.ndarray], grid: Grid | Sequence[float]) -> np.ndarray:
        grid = as_grid(grid)
        data = stack_channels(self.spec, channels, grid)
        with self._lock:
            fn = self._function()
            start = time.perf_counter()
            try:
                seg = fn(list(data), grid, **self._accepted(fn, self._options()))
            except ModelError:
                raise
            except Exception as exc:
                raise ModelError(
                    f"model {self.spec.name} failed: {type(exc).__name__}: {exc}"
                ) from exc
        logger.info("model %s segmented in %.1f s", self.spec.name, time.perf_counter() - start)
        return check_output(self.spec, seg, data.shape[1:])
