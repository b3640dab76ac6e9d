"""The models on disk: ``models/<name>/model.yaml`` read, checked and hashed into ModelSpecs.

The weights hash covers every file that defines a model's output; it goes into each RTSTRUCT's
provenance. Problems are reported as :class:`gateway.errors.ConfigError` by path, like the
gateway config's. This module does not import :mod:`gateway.config` (which calls it).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from gateway.errors import ConfigError
from gateway.segment.spec import ModelSpec, validation_problems


def read_yaml(path: Path) -> Any:
    """A YAML file's content ({} when empty); a missing or malformed file is a ConfigError."""
    try:
        return yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError([(str(path), "file not found")]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([(str(path), f"not valid YAML: {exc}")]) from None


def weight_files(spec: ModelSpec) -> list[Path]:
    """The files that define a model's output, hashed into every RTSTRUCT's provenance.

    nnU-Net: plans, dataset and checkpoints. Other kinds: every file of the model folder
    (adapter code, scripts) plus the files named in ``weights``."""
    if spec.kind == "nnunet":
        folder = spec.trained_model_folder
        return [folder / "plans.json", folder / "dataset.json", *spec.checkpoint_files()]
    own = sorted(
        p
        for p in spec.path.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.name != "model.yaml"
    )
    return own + [resolve_weight(spec.path, w) for w in spec.weights]


def resolve_weight(model_dir: Path, name: str) -> Path:
    """A weights file: relative to the model folder, or ``package:<pkg>/<path>`` inside an
    installed package (found without importing it)."""
    if name.startswith("package:"):
        from importlib.util import find_spec

        pkg, _, rel = name.removeprefix("package:").partition("/")
        try:
            found = find_spec(pkg)
        except (ImportError, ValueError):
            found = None
        if found is None or not found.submodule_search_locations:
            return Path(f"<package '{pkg}' not installed>") / rel
        return Path(next(iter(found.submodule_search_locations))) / rel
    return model_dir / name


def weights_sha256(spec: ModelSpec) -> str:
    digest = hashlib.sha256()
    for f in weight_files(spec):
        digest.update(f.name.encode())
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def load_model(model_dir: Path) -> ModelSpec:
    """Read and check ``model_dir/model.yaml``; record its path and weights hash."""
    raw = read_yaml(model_dir / "model.yaml")
    prefix = f"{model_dir.name}/model.yaml:"
    try:
        spec = ModelSpec.model_validate({**raw, "path": model_dir.resolve()})
    except ValidationError as exc:
        raise ConfigError(validation_problems(exc, prefix)) from None
    problems = []
    if spec.nnunet is not None:
        folder = spec.trained_model_folder
        for name in ("plans.json", "dataset.json"):
            if not (folder / name).is_file():
                problems.append((f"{prefix}nnunet.folder", f"{folder / name} not found"))
        for ckpt in spec.checkpoint_files():
            if not ckpt.is_file():
                problems.append((f"{prefix}nnunet.folds", f"checkpoint {ckpt} not found"))
    for j, name in enumerate(spec.weights):
        found = resolve_weight(spec.path, name)
        if not found.is_file():
            problems.append((f"{prefix}weights[{j}]", f"{found} not found"))
    if problems:
        raise ConfigError(problems)
    return spec.model_copy(update={"weights_sha256": weights_sha256(spec)})


def load_models(models_dir: Path) -> dict[str, ModelSpec]:
    """Every ``models_dir/*/model.yaml`` by model name; all problems of all models at once."""
    models: dict[str, ModelSpec] = {}
    problems: list[tuple[str, str]] = []
    if not models_dir.is_dir():
        return models
    for d in sorted(p for p in models_dir.iterdir() if (p / "model.yaml").is_file()):
        try:
            spec = load_model(d)
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        models[spec.name] = spec
    if problems:
        raise ConfigError(problems)
    return models
