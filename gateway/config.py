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
    model_validator,
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


class Range(_Frozen):
    """A numeric range; either end may be open."""

    min: float | None = None
    max: float | None = None

    def contains(self, value: float) -> bool:
        return (self.min is None or value >= self.min) and (self.max is None or value <= self.max)


# One condition on one attribute: a regular expression searched in the value (str), a set of
# items the (multi-valued) value must all contain (list), or a numeric range ({min, max}).
Condition = Regex | tuple[str, ...] | Range


class SeriesSelector(_Frozen):
    """Conditions on a series' DICOM attributes, all of which must hold.

    Written in YAML as a mapping from DICOM keyword to a condition::

        Modality: "^MR$"                 # regular expression, searched (re.search)
        SeriesDescription: "(?i)t2.*tra"
        ImageType: [DIXON, WATER]        # the value contains all of these (case-insensitive)
        EchoTime: {min: 80, max: 130}    # a number in this range

    Multi-valued attributes are joined with ``\\`` for regular expressions. A missing attribute
    never matches. (The older form ``{keywords: {...}}`` is read as the same mapping.)
    """

    conditions: dict[str, Condition] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _flat_mapping(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and "conditions" not in data:
            if set(data) == {"keywords"} and isinstance(data["keywords"], Mapping):
                data = data["keywords"]
            return {"conditions": dict(data)}
        return data

    @field_validator("conditions")
    @classmethod
    def _keywords_are_dicom(cls, value: dict[str, Condition]) -> dict[str, Condition]:
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
    """One model input, in the model's channel order.

    The ``primary`` channel's grid is the grid the model runs on and the series the RTSTRUCT
    references; the other channels are resampled onto it. Without an explicit primary the first
    channel is primary.
    """

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,32}$")]
    select: SeriesSelector
    primary: bool = False


class Guardrails(_Frozen):
    """A model's intended use, checked on its primary series before it runs. Unset = unchecked.

    ``max_oblique_deg``: the slice normal may tilt at most this far from the patient's
    cranio-caudal axis (axial acquisitions). ``slice_thickness_mm``: SliceThickness, or the
    spacing between slices when absent. ``field_of_view_mm``: both in-plane extents.
    """

    modality: tuple[str, ...] | None = None
    max_oblique_deg: Annotated[float, Field(ge=0, le=90)] | None = None
    slice_thickness_mm: tuple[float, float] | None = None
    pixel_spacing_mm: tuple[float, float] | None = None
    slices: tuple[int, int] | None = None
    field_of_view_mm: tuple[float, float] | None = None

    @field_validator("slice_thickness_mm", "pixel_spacing_mm", "slices", "field_of_view_mm")
    @classmethod
    def _ordered(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and not 0 <= value[0] <= value[1]:
            raise ValueError("give [min, max] with 0 <= min <= max")
        return value


class NnUNetSpec(_Frozen):
    folder: str = Field(description="nnU-Net v2 trained-model folder, relative to model.yaml")
    configuration: str = "3d_fullres"
    folds: tuple[int | Literal["all"], ...] = (0,)
    checkpoint: str = "checkpoint_final.pth"
    use_mirroring: bool = False
    tile_step_size: Annotated[float, Field(gt=0, le=1)] = 0.5


class CommandSpec(_Frozen):
    """An external program. ``args`` may use ``{<channel name>}`` (that channel's NIfTI path),
    ``{output}`` (where the program must write the label map as NIfTI), ``{workdir}`` and
    ``{python}`` (this interpreter). The program runs without a shell, in ``workdir``."""

    args: Annotated[tuple[str, ...], Field(min_length=1)]
    timeout_s: Annotated[float, Field(gt=0)] = 600.0
    env: dict[str, str] = Field(default_factory=dict)


class PythonSpec(_Frozen):
    """A function ``module:function`` called as ``function(channels, grid, **options)``; a module
    file in the model folder is found first, then installed packages. An optional
    ``module:warm_up`` is called once at start with the same options."""

    entry: Annotated[str, Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")]
    options: dict[str, Any] = Field(default_factory=dict)


class ModelSpec(_Frozen):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
    kind: Literal["nnunet", "command", "python"]
    version: Annotated[str, Field(min_length=1, max_length=32)]
    description: str = ""
    nnunet: NnUNetSpec | None = None
    command: CommandSpec | None = None
    python: PythonSpec | None = None
    inputs: Annotated[tuple[InputChannel, ...], Field(min_length=1)]
    guardrails: Guardrails = Guardrails()
    labels: dict[int, RoiSpec]
    # Extra files that define the output (hashed for provenance): relative paths, or
    # "package:<pkg>/<path>" for weights shipped inside an installed package.
    weights: tuple[str, ...] = ()
    # Filled by the loader, not by the YAML.
    path: Path = Path(".")
    weights_sha256: str = ""

    @field_validator("labels")
    @classmethod
    def _labels_positive(cls, value: dict[int, RoiSpec]) -> dict[int, RoiSpec]:
        if not value:
            raise ValueError("at least one label is required")
        if any(not 0 < k < 256 for k in value):
            raise ValueError("label values must be 1-255 (0 is background)")
        return value

    @model_validator(mode="after")
    def _kind_settings(self) -> ModelSpec:
        for kind in ("nnunet", "command", "python"):
            given = getattr(self, kind) is not None
            if kind == self.kind and not given:
                raise ValueError(f"kind '{kind}' needs a '{kind}' section")
            if kind != self.kind and given:
                raise ValueError(f"'{kind}' section given but kind is '{self.kind}'")
        names = [c.name for c in self.inputs]
        if len(set(names)) != len(names):
            raise ValueError("input channel names must be unique")
        if sum(c.primary for c in self.inputs) > 1:
            raise ValueError("at most one input channel may be primary")
        if self.command is not None:
            import string

            known = {*names, "output", "workdir", "python", "model_dir", "device", "threads"}
            for arg in self.command.args:
                try:
                    fields = {f for _, f, _, _ in string.Formatter().parse(arg) if f is not None}
                except ValueError as exc:
                    raise ValueError(f"command argument {arg!r}: {exc}") from None
                unknown = fields - known
                if unknown:
                    raise ValueError(
                        f"command argument {arg!r} uses unknown placeholder(s) "
                        f"{sorted(unknown)}; known: {sorted(known)}"
                    )
        return self

    @property
    def primary_index(self) -> int:
        return next((i for i, c in enumerate(self.inputs) if c.primary), 0)

    @property
    def trained_model_folder(self) -> Path:
        assert self.nnunet is not None
        return self.path / self.nnunet.folder

    def checkpoint_files(self) -> list[Path]:
        assert self.nnunet is not None
        folder = self.trained_model_folder
        return [folder / f"fold_{f}" / self.nnunet.checkpoint for f in self.nnunet.folds]


# ---------------------------------------------------------------------------------------------
# Gateway (config.yaml)


class ServerTls(_Frozen):
    """DICOM TLS on the Storage SCP (a second listener on its own port, PS3.15 Annex B).

    ``certificate``/``private_key``: our PEM certificate (chain) and key. With
    ``require_client_certificate`` a peer must present a certificate that ``ca_certificates``
    (PEM bundle) verifies, else the TLS handshake fails and no association is made."""

    port: Port = 2762
    certificate: Path
    private_key: Path
    ca_certificates: Path | None = None
    require_client_certificate: bool = False

    @model_validator(mode="after")
    def _ca_for_clients(self) -> ServerTls:
        if self.require_client_certificate and self.ca_certificates is None:
            raise ValueError("require_client_certificate needs ca_certificates")
        return self


class ClientTls(_Frozen):
    """DICOM TLS to one destination. ``ca_certificates`` verifies the destination's certificate
    (``verify_server: false`` accepts any, for tests only); ``certificate``/``private_key`` are
    ours, for destinations that verify clients."""

    ca_certificates: Path | None = None
    certificate: Path | None = None
    private_key: Path | None = None
    verify_server: bool = True
    check_hostname: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> ClientTls:
        if self.verify_server and self.ca_certificates is None:
            raise ValueError("verify_server needs ca_certificates")
        if (self.certificate is None) != (self.private_key is None):
            raise ValueError("give both certificate and private_key, or neither")
        return self


class ListenConfig(_Frozen):
    host: str = "127.0.0.1"
    port: Port = 11112
    tls: ServerTls | None = None


class PeerConfig(_Frozen):
    """A node allowed to associate with us: by calling AE title, optionally also by source
    address (``host``); ``require_tls``: only over the TLS listener."""

    ae_title: AETitle
    host: str | None = None
    require_tls: bool = False


class DestinationConfig(_Frozen):
    ae_title: AETitle
    host: str
    port: Port
    tls: ClientTls | None = None


class LimitsConfig(_Frozen):
    """What one sender may cost us. Beyond ``max_associations`` an association is rejected
    (transient, local limit exceeded); an association silent for ``idle_timeout_s`` is aborted;
    an instance beyond a study's instance or byte limit is refused with 0xA700."""

    max_associations: Annotated[int, Field(ge=1, le=1000)] = 32
    idle_timeout_s: Annotated[float, Field(gt=0)] = 60.0
    max_instances_per_study: Annotated[int, Field(ge=1)] = 20000
    max_bytes_per_study: Annotated[int, Field(ge=1)] = 16 * 1024**3


class StorageConfig(_Frozen):
    """Disk guard and retention of the spool.

    Below ``min_free_mb`` free under the spool, new instances are refused with 0xA700 (Out of
    Resources). Every ``purge_interval_s`` studies whose last instance is older than
    ``retention_days`` and whose every job was delivered are deleted (spool, RTSTRUCTs, rows);
    a study with undelivered or unfinished work is never deleted."""

    min_free_mb: Annotated[float, Field(ge=0)] = 2048.0
    retention_days: Annotated[float, Field(gt=0)] = 30.0
    purge_interval_s: Annotated[float, Field(gt=0)] = 3600.0


# Crash points for the fault harness (tests/faults, bench/faults.py): the process SIGKILLs
# itself when it reaches a point for the n-th time. Never set in production.
CRASH_POINTS = (
    "receive.before_ack",  # instance durable in the spool, C-STORE response not yet sent
    "receive.after_ack",  # C-STORE response (success) sent
    "job.queued",  # job committed QUEUED, before it is handed to a worker
    "job.segment",  # a model is running
    "deliver.before_send",  # association to the destination open, RTSTRUCT not yet sent
    "deliver.after_accept",  # destination answered success, not yet recorded
)


class FaultsConfig(_Frozen):
    crash_at: dict[str, Annotated[int, Field(ge=1)]] = Field(default_factory=dict)

    @field_validator("crash_at")
    @classmethod
    def _known(cls, value: dict[str, int]) -> dict[str, int]:
        unknown = set(value) - set(CRASH_POINTS)
        if unknown:
            raise ValueError(f"unknown crash point(s) {sorted(unknown)}; known: {CRASH_POINTS}")
        return value


class PathsConfig(_Frozen):
    spool: Path = Path("var/spool")
    output: Path = Path("var/rtstruct")
    models: Path = Path("models")
    log: Path | None = None  # also log to this file (rotated), besides stderr


class DatabaseConfig(_Frozen):
    url: str = "sqlite:///var/aircon.db"


class QueueConfig(_Frozen):
    backend: Literal["sqlite", "redis"] = "sqlite"
    path: Path = Path("var/queue.db")
    url: str | None = None
    workers: Annotated[int, Field(ge=1, le=16)] = 2
    # A running job or delivery holds a lease this long, renewed every third of it while its
    # process lives; when it expires, any gateway process sharing the database takes it over.
    lease_s: Annotated[float, Field(ge=1)] = 60.0
    # How often each process looks in the database for due study checks, expired leases and
    # work queued by another process.
    poll_s: Annotated[float, Field(gt=0, le=10)] = 0.25


class AssemblyConfig(_Frozen):
    series_quiet_s: Annotated[float, Field(ge=0)] = 10.0
    study_timeout_s: Annotated[float, Field(gt=0)] = 1800.0
    # A study whose sending association was cut off (aborted, connection lost, or open when the
    # gateway stopped) may be incomplete: wait this long for the sender to send it again.
    interrupted_wait_s: Annotated[float, Field(ge=0)] = 120.0


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
    """Which studies go to which models and where the merged structure set goes.

    ``models`` run one after another; their ROIs are merged into one RTSTRUCT per study and rule.
    When two models make the same clinic ROI, ``prefer`` names the model whose contour is kept.
    """

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
    match: RuleMatch = RuleMatch()
    models: Annotated[tuple[str, ...], Field(min_length=1)]
    prefer: dict[str, str] = Field(default_factory=dict)
    destinations: Annotated[tuple[str, ...], Field(min_length=1)]

    @model_validator(mode="before")
    @classmethod
    def _single_model(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and "model" in data:
            data = dict(data)
            model = data.pop("model")
            if "models" in data:
                raise ValueError("give 'models' (a list) or 'model', not both")
            data["models"] = [model]
        return data

    @field_validator("models")
    @classmethod
    def _unique(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(value)) != len(value):
            raise ValueError("a model may appear only once in a rule")
        return value


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
    limits: LimitsConfig = LimitsConfig()
    storage: StorageConfig = StorageConfig()
    faults: FaultsConfig = FaultsConfig()
    rules: tuple[RuleConfig, ...] = ()
    # Clinic ROI naming: model label name (case-insensitive) -> clinic name, colour and type.
    # Entries here extend and override the built-in TG-263 names (gateway.contour.structures).
    roi_names: dict[str, RoiSpec] = Field(default_factory=dict)
    # Filled by the loader from paths.models.
    models: dict[str, ModelSpec] = Field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Loading


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if part == "conditions":  # SeriesSelector's inner field: YAML writes the mapping flat
            continue
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
    raw = _read_yaml(model_dir / "model.yaml")
    prefix = f"{model_dir.name}/model.yaml:"
    try:
        spec = ModelSpec.model_validate({**raw, "path": model_dir.resolve()})
    except ValidationError as exc:
        raise ConfigError(_problems(exc, prefix)) from None
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
        if not resolve_weight(spec.path, name).is_file():
            found = resolve_weight(spec.path, name)
            problems.append((f"{prefix}weights[{j}]", f"{found} not found"))
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
        key = "model" if "model" in rule else "models"
        names = rule.get(key)
        listed = [names] if isinstance(names, str) else names
        for j, model in enumerate(listed if isinstance(listed, list | tuple) else ()):
            if models is not None and isinstance(model, str) and model not in models:
                known = ", ".join(sorted(models)) or "none"
                where = f"rules[{i}].{key}" + ("" if isinstance(names, str) else f"[{j}]")
                problems.append((where, f"unknown model '{model}' (known: {known})"))
        dest_names = rule.get("destinations")
        for j, dest in enumerate(dest_names if isinstance(dest_names, list | tuple) else ()):
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
        | ({"log": _resolve(base_dir, cfg.paths.log)} if cfg.paths.log else {})
    )
    listen = cfg.listen
    if listen.tls is not None:
        listen = listen.model_copy(update={"tls": _resolve_files(base_dir, listen.tls)})
    destinations = {
        name: d.model_copy(update={"tls": _resolve_files(base_dir, d.tls)}) if d.tls else d
        for name, d in cfg.destinations.items()
    }
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
    if models is not None and not problems:
        from gateway.contour.structures import plan_structures

        for i, rule in enumerate(cfg.rules):
            try:
                plan_structures(rule, models, cfg.roi_names)
            except ValueError as exc:
                problems.append((f"rules[{i}].prefer", str(exc)))
    tls_sections = [("listen.tls", listen.tls)] + [
        (f"destinations.{n}.tls", d.tls) for n, d in destinations.items()
    ]
    for where, tls in tls_sections:
        for f in ("certificate", "private_key", "ca_certificates"):
            path = getattr(tls, f, None) if tls is not None else None
            if path is not None and not path.is_file():
                problems.append((f"{where}.{f}", f"{path} not found"))
    if cfg.queue.backend == "redis" and not cfg.queue.url:
        problems.append(("queue.url", "required when queue.backend is redis"))
    if problems or models is None:
        raise ConfigError(problems)
    return cfg.model_copy(
        update={
            "paths": paths,
            "listen": listen,
            "destinations": destinations,
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


def _resolve_files(base: Path, tls: Any) -> Any:
    """A TLS section with its certificate/key paths resolved against ``base``."""
    fields = ("certificate", "private_key", "ca_certificates")
    return tls.model_copy(
        update={f: _resolve(base, getattr(tls, f)) for f in fields if getattr(tls, f) is not None}
    )


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out
