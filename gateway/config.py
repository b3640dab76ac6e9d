"""Configuration: ``config.yaml`` and ``models/<name>/model.yaml`` -> one frozen, validated object.

Load it once with :func:`load_config` and pass it to constructors. Nothing here reads the
environment or holds state at import time.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)

from gateway.errors import ConfigError

# ---------------------------------------------------------------------------------------------
# Value types


def _check_ae_title(value: str) -> str:
    if not 1 <= len(value) <= 16:
        raise ValueError(f"AE title must be 1-16 characters, got {len(value)}")
    if not value.strip():
        raise ValueError("AE title must not be all spaces")
    if "\\" in value or any(ord(c) < 32 or ord(c) > 126 for c in value):
        raise ValueError("AE title may hold printable ASCII only, without backslash")
    return value


def _check_regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"regular expression does not compile: {exc}") from None
    return value


def _check_uid_root(value: str) -> str:
    if not re.fullmatch(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*\.", value):
        raise ValueError("UID root must be dotted digits ending with '.', e.g. '1.2.826.0.1.'")
    if len(value) > 40:
        raise ValueError("UID root must be at most 40 characters to leave room for the suffix")
    return value


AETitle = Annotated[str, AfterValidator(_check_ae_title)]
Regex = Annotated[str, AfterValidator(_check_regex)]
Port = Annotated[int, Field(ge=1, le=65535)]
RGB = Annotated[tuple[int, int, int], Field()]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# ---------------------------------------------------------------------------------------------
# Series selection: shared by routing rules and model input channels


class SeriesSelector(_Frozen):
    """Conditions on a series' DICOM attributes, all of which must hold.

    ``keywords`` maps a DICOM keyword to a regular expression searched (``re.search``) in the
    attribute's value; multi-valued attributes (``ImageType``) are joined with ``\\``. Anchor with
    ``^...$`` for exact matches. A missing attribute never matches.
    """

    keywords: dict[str, Regex] = Field(default_factory=dict)

    @field_validator("keywords")
    @classmethod
    def _keywords_are_dicom(cls, value: dict[str, str]) -> dict[str, str]:
        from pydicom.datadict import tag_for_keyword

        for key in value:
            if tag_for_keyword(key) is None:
                raise ValueError(f"'{key}' is not a DICOM keyword")
        return value


# ---------------------------------------------------------------------------------------------
# Models (models/<name>/model.yaml)


class RoiSpec(_Frozen):
    name: Annotated[str, Field(min_length=1, max_length=64)]
    color: RGB
    type: Literal[
        "ORGAN", "PTV", "CTV", "GTV", "AVOIDANCE", "EXTERNAL", "CAVITY", "CONTROL", "MARKER"
    ] = "ORGAN"

    @field_validator("color")
    @classmethod
    def _rgb(cls, value: tuple[int, int, int]) -> tuple[int, int, int]:
        if any(not 0 <= c <= 255 for c in value):
            raise ValueError("colour components must be 0-255")
        return value


class InputChannel(_Frozen):
    """One model input, in the model's channel order."""

    name: str
    select: SeriesSelector


class NnUNetSpec(_Frozen):
    folder: str = Field(description="nnU-Net v2 trained-model folder, relative to model.yaml")
    configuration: str = "3d_fullres"
    folds: tuple[int | Literal["all"], ...] = (0,)
    checkpoint: str = "checkpoint_final.pth"
    use_mirroring: bool = False
    tile_step_size: Annotated[float, Field(gt=0, le=1)] = 0.5


class ModelSpec(_Frozen):
    name: str
    kind: Literal["nnunet"]
    version: Annotated[str, Field(min_length=1, max_length=32)]
    description: str = ""
    nnunet: NnUNetSpec
    inputs: Annotated[tuple[InputChannel, ...], Field(min_length=1)]
    labels: dict[int, RoiSpec]
    # Filled by the loader, not by the YAML.
    path: Path = Path(".")
    weights_sha256: str = ""

    @field_validator("labels")
    @classmethod
    def _labels_positive(cls, value: dict[int, RoiSpec]) -> dict[int, RoiSpec]:
        if not value:
            raise ValueError("at least one label is required")
        if any(k <= 0 for k in value):
            raise ValueError("label values must be positive (0 is background)")
        return value

    @property
    def trained_model_folder(self) -> Path:
        return self.path / self.nnunet.folder

    def checkpoint_files(self) -> list[Path]:
        folder = self.trained_model_folder
        return [folder / f"fold_{f}" / self.nnunet.checkpoint for f in self.nnunet.folds]


# ---------------------------------------------------------------------------------------------
# Gateway (config.yaml)


class ListenConfig(_Frozen):
    host: str = "127.0.0.1"
    port: Port = 11112


class PeerConfig(_Frozen):
    """A node allowed to associate with us (by calling AE title, optionally also by host)."""

    ae_title: AETitle
    host: str | None = None


class DestinationConfig(_Frozen):
    ae_title: AETitle
    host: str
    port: Port


class PathsConfig(_Frozen):
    spool: Path = Path("var/spool")
    output: Path = Path("var/rtstruct")
    models: Path = Path("models")


class DatabaseConfig(_Frozen):
    url: str = "sqlite:///var/aircon.db"


class QueueConfig(_Frozen):
    backend: Literal["sqlite", "redis"] = "sqlite"
    path: Path = Path("var/queue.db")
    url: str | None = None
    workers: Annotated[int, Field(ge=1, le=16)] = 2


class AssemblyConfig(_Frozen):
    series_quiet_s: Annotated[float, Field(ge=0)] = 10.0
    study_timeout_s: Annotated[float, Field(gt=0)] = 1800.0


class DeliveryConfig(_Frozen):
    max_attempts: Annotated[int, Field(ge=1)] = 8
    backoff_base_s: Annotated[float, Field(gt=0)] = 5.0
    backoff_max_s: Annotated[float, Field(gt=0)] = 900.0
    timeout_s: Annotated[float, Field(gt=0)] = 30.0


class SegmentationConfig(_Frozen):
    device: Literal["auto", "cuda", "cpu"] = "auto"
    threads: Annotated[int, Field(ge=1)] = 2


class RtstructConfig(_Frozen):
    uid_root: Annotated[str, AfterValidator(_check_uid_root)] = "1.2.826.0.1.3680043.8.498."
    manufacturer: str = "AIRCON"
    series_description: Annotated[str, Field(max_length=64)] = "AI contours - REVIEW REQUIRED"
    structure_set_label: Annotated[str, Field(max_length=16)] = "AI UNAPPROVED"


class RuleMatch(_Frozen):
    calling_ae: Regex | None = None
    called_ae: Regex | None = None
    series: SeriesSelector | None = Field(
        default=None, description="at least one series of the study must match"
    )


class RuleConfig(_Frozen):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
    match: RuleMatch = RuleMatch()
    model: str
    destinations: Annotated[tuple[str, ...], Field(min_length=1)]


class GatewayConfig(_Frozen):
    ae_title: AETitle = "AIRCON"
    listen: ListenConfig = ListenConfig()
    peers: tuple[PeerConfig, ...] = ()
    destinations: dict[str, DestinationConfig] = Field(default_factory=dict)
    paths: PathsConfig = PathsConfig()
    database: DatabaseConfig = DatabaseConfig()
    queue: QueueConfig = QueueConfig()
    assembly: AssemblyConfig = AssemblyConfig()
    delivery: DeliveryConfig = DeliveryConfig()
    segmentation: SegmentationConfig = SegmentationConfig()
    rtstruct: RtstructConfig = RtstructConfig()
    rules: tuple[RuleConfig, ...] = ()
    # Filled by the loader from paths.models.
    models: dict[str, ModelSpec] = Field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Loading


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _problems(exc: ValidationError, prefix: str = "") -> list[tuple[str, str]]:
    found = []
    for err in exc.errors():
        path = _loc(tuple(err["loc"]))
        msg = err["msg"].removeprefix("Value error, ")
        found.append((f"{prefix}{path}", msg))
    return found


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError([(str(path), "file not found")]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([(str(path), f"not valid YAML: {exc}")]) from None


def weights_sha256(spec: ModelSpec) -> str:
    """SHA-256 over the files that define the model's output: plans, dataset and checkpoints."""
    digest = hashlib.sha256()
    folder = spec.trained_model_folder
    for f in [folder / "plans.json", folder / "dataset.json", *spec.checkpoint_files()]:
        digest.update(f.name.encode())
        digest.update(f.read_bytes())
    return digest.hexdigest()


def load_model(model_dir: Path) -> ModelSpec:
    """Read and check ``model_dir/model.yaml``; record its path and weights hash."""
    raw = _read_yaml(model_dir / "model.yaml")
    prefix = f"{model_dir.name}/model.yaml:"
    try:
        spec = ModelSpec.model_validate({**raw, "path": model_dir.resolve()})
    except ValidationError as exc:
        raise ConfigError(_problems(exc, prefix)) from None
    problems = []
    folder = spec.trained_model_folder
    for name in ("plans.json", "dataset.json"):
        if not (folder / name).is_file():
            problems.append((f"{prefix}nnunet.folder", f"{folder / name} not found"))
    for ckpt in spec.checkpoint_files():
        if not ckpt.is_file():
            problems.append((f"{prefix}nnunet.folds", f"checkpoint {ckpt} not found"))
    if problems:
        raise ConfigError(problems)
    return spec.model_copy(update={"weights_sha256": weights_sha256(spec)})


def load_models(models_dir: Path) -> dict[str, ModelSpec]:
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


def _reference_problems(
    data: Mapping[str, Any], models: Mapping[str, Any] | None
) -> list[tuple[str, str]]:
    """Rules naming unknown models or destinations. Works on the unvalidated mapping, so that
    these are reported in the same run as any other invalid key."""
    dests = data.get("destinations")
    known_dests = set(dests) if isinstance(dests, Mapping) else set()
    rules = data.get("rules")
    problems = []
    for i, rule in enumerate(rules if isinstance(rules, list | tuple) else ()):
        if not isinstance(rule, Mapping):
            continue
        model = rule.get("model")
        if models is not None and isinstance(model, str) and model not in models:
            known = ", ".join(sorted(models)) or "none"
            problems.append((f"rules[{i}].model", f"unknown model '{model}' (known: {known})"))
        names = rule.get("destinations")
        for j, dest in enumerate(names if isinstance(names, list | tuple) else ()):
            if isinstance(dest, str) and dest not in known_dests:
                problems.append((f"rules[{i}].destinations[{j}]", f"unknown destination '{dest}'"))
    return problems


def parse_config(
    raw: Mapping[str, Any], base_dir: Path, overrides: Mapping[str, Any] | None = None
) -> GatewayConfig:
    """Validate a config mapping; relative paths are taken relative to ``base_dir``."""
    data = _deep_merge(dict(raw), dict(overrides or {}))
    problems: list[tuple[str, str]] = []
    models: dict[str, ModelSpec] | None = None
    try:
        cfg = GatewayConfig.model_validate(data)
    except ValidationError as exc:
        problems = _problems(exc)
        raw_paths = data.get("paths")
        models_dir = raw_paths.get("models") if isinstance(raw_paths, Mapping) else None
        try:
            models = load_models(_resolve(base_dir, Path(str(models_dir or "models"))))
        except ConfigError as model_exc:
            problems.extend(model_exc.problems)
        raise ConfigError(problems + _reference_problems(data, models)) from None
    paths = cfg.paths.model_copy(
        update={k: _resolve(base_dir, getattr(cfg.paths, k)) for k in ("spool", "output", "models")}
    )
    queue = cfg.queue.model_copy(update={"path": _resolve(base_dir, cfg.queue.path)})
    db_url = cfg.database.url
    if db_url.startswith("sqlite:///") and not db_url.startswith("sqlite:////"):
        rel = db_url.removeprefix("sqlite:///")
        if rel and rel != ":memory:":
            db_url = "sqlite:///" + str(_resolve(base_dir, Path(rel)))
    try:
        models = load_models(paths.models)
    except ConfigError as exc:
        problems.extend(exc.problems)
    problems.extend(_reference_problems(data, models))
    names = [r.name for r in cfg.rules]
    for i, name in enumerate(names):
        if names.index(name) != i:
            problems.append((f"rules[{i}].name", f"duplicate rule name '{name}'"))
    if cfg.queue.backend == "redis" and not cfg.queue.url:
        problems.append(("queue.url", "required when queue.backend is redis"))
    if problems or models is None:
        raise ConfigError(problems)
    return cfg.model_copy(
        update={
            "paths": paths,
            "queue": queue,
            "database": cfg.database.model_copy(update={"url": db_url}),
            "models": models,
        }
    )


def load_config(path: Path, overrides: Mapping[str, Any] | None = None) -> GatewayConfig:
    """Read ``config.yaml`` and every ``models/*/model.yaml``; raise ConfigError on problems."""
    raw = _read_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError([(str(path), "top level must be a mapping")])
    return parse_config(raw, path.resolve().parent, overrides)


def _resolve(base: Path, p: Path) -> Path:
    return p if p.is_absolute() else (base / p).resolve()


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out
