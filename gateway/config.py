"""Configuration: ``config.yaml`` and ``models/<name>/model.yaml`` -> one frozen, validated object.

Load it once with :func:`load_config` and pass it to constructors. Nothing here reads the
environment or holds state at import time. The model schema lives in
:mod:`gateway.segment.spec`, the models folder is read by :mod:`gateway.segment.registry`.

Cross-checks are validators, so that one run reports every problem by path: references from
rules to models and destinations are checked against the validation context that
:func:`parse_config` passes (the models on disk, the destinations of the same file).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from gateway.errors import ConfigError
from gateway.ops_policy import (
    AlertsConfig,
    DatabaseConfig,
    HttpConfig,
    MonitorConfig,
    QueueConfig,
    resolve_http,
)
from gateway.ops_policy import (
    invalid as _invalid,
)
from gateway.qa_policy import QaConfig
from gateway.segment.registry import load_models, read_yaml
from gateway.segment.spec import (
    Frozen,
    ModelSpec,
    Regex,
    RoiSpec,
    SegmentationConfig,
    SeriesSelector,
    validation_problems,
)

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


def _unique(value: tuple[str, ...]) -> tuple[str, ...]:
    if len(set(value)) != len(value):
        raise ValueError("each output at most once")
    return value


def _check_uid_root(value: str) -> str:
    if not re.fullmatch(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*\.", value):
        raise ValueError("UID root must be dotted digits ending with '.', e.g. '1.2.826.0.1.'")
    if len(value) > 40:
        raise ValueError("UID root must be at most 40 characters to leave room for the suffix")
    return value


AETitle = Annotated[str, AfterValidator(_check_ae_title)]
Port = Annotated[int, Field(ge=1, le=65535)]


# ---------------------------------------------------------------------------------------------
# Gateway (config.yaml)


class ServerTls(Frozen):
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


class ClientTls(Frozen):
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


class ListenConfig(Frozen):
    host: str = "127.0.0.1"
    port: Port = 11112
    tls: ServerTls | None = None


class PeerConfig(Frozen):
    """A node allowed to associate with us: by calling AE title, optionally also by source
    address (``host``); ``require_tls``: only over the TLS listener."""

    ae_title: AETitle
    host: str | None = None
    require_tls: bool = False


class DestinationConfig(Frozen):
    """A planning system or archive; ``outputs``: what it gets of each job, in one association
    (``rtstruct``, ``seg``: a DICOM Segmentation of the same ROIs)."""

    ae_title: AETitle
    host: str
    port: Port
    tls: ClientTls | None = None
    outputs: Annotated[
        tuple[Literal["rtstruct", "seg"], ...], Field(min_length=1), AfterValidator(_unique)
    ] = ("rtstruct",)


class LimitsConfig(Frozen):
    """What one sender may cost us. Beyond ``max_associations`` an association is rejected
    (transient, local limit exceeded); an association silent for ``idle_timeout_s`` is aborted;
    an instance beyond a study's instance or byte limit is refused with 0xA700."""

    max_associations: Annotated[int, Field(ge=1, le=1000)] = 32
    idle_timeout_s: Annotated[float, Field(gt=0)] = 60.0
    max_instances_per_study: Annotated[int, Field(ge=1)] = 20000
    max_bytes_per_study: Annotated[int, Field(ge=1)] = 16 * 1024**3


class StorageConfig(Frozen):
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


class FaultsConfig(Frozen):
    crash_at: dict[str, Annotated[int, Field(ge=1)]] = Field(default_factory=dict)

    @field_validator("crash_at")
    @classmethod
    def _known(cls, value: dict[str, int]) -> dict[str, int]:
        unknown = set(value) - set(CRASH_POINTS)
        if unknown:
            raise ValueError(f"unknown crash point(s) {sorted(unknown)}; known: {CRASH_POINTS}")
        return value


class PathsConfig(Frozen):
    spool: Path = Path("var/spool")
    output: Path = Path("var/rtstruct")
    models: Path = Path("models")
    returned: Path = Path("var/returned")  # structure sets sent back (the approved ones)
    log: Path | None = None  # also log to this file (rotated), besides stderr


class AssemblyConfig(Frozen):
    series_quiet_s: Annotated[float, Field(ge=0)] = 10.0
    study_timeout_s: Annotated[float, Field(gt=0)] = 1800.0
    # A study whose sending association was cut off (aborted, connection lost, or open when the
    # gateway stopped) may be incomplete: wait this long for the sender to send it again.
    interrupted_wait_s: Annotated[float, Field(ge=0)] = 120.0


class DeliveryConfig(Frozen):
    max_attempts: Annotated[int, Field(ge=1)] = 8
    backoff_base_s: Annotated[float, Field(gt=0)] = 5.0
    backoff_max_s: Annotated[float, Field(gt=0)] = 900.0
    timeout_s: Annotated[float, Field(gt=0)] = 30.0


class RtstructConfig(Frozen):
    uid_root: Annotated[str, AfterValidator(_check_uid_root)] = "1.2.826.0.1.3680043.8.498."
    manufacturer: str = "AIRCON"
    series_description: Annotated[str, Field(max_length=64)] = "AI contours - REVIEW REQUIRED"
    structure_set_label: Annotated[str, Field(max_length=16)] = "AI UNAPPROVED"
    # On a multi-frame primary: reference its frames (ReferencedFrameNumber), or a classic
    # single-frame copy of them that is sent along (for planning systems that need one).
    multiframe_reference: Literal["frames", "classic_copy"] = "frames"
    seg_type: Literal["binary", "fractional"] = "binary"  # DICOM SEG output (``outputs: [seg]``)
    seg_series_description: Annotated[str, Field(max_length=64)] = "AI segments - REVIEW REQUIRED"


class RuleMatch(Frozen):
    calling_ae: Regex | None = None
    called_ae: Regex | None = None
    series: SeriesSelector | None = Field(
        default=None, description="at least one series of the study must match"
    )


class RuleConfig(Frozen):
    """Which studies go to which models and where the merged structure set goes.

    ``models`` run one after another; their ROIs are merged into one RTSTRUCT per study and rule.
    When two models make the same clinic ROI, ``prefer`` names the model whose contour is kept.
    """

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
    match: RuleMatch = RuleMatch()
    models: Annotated[tuple[str, ...], Field(min_length=1)]
    prefer: dict[str, str] = Field(default_factory=dict)
    destinations: Annotated[tuple[str, ...], Field(min_length=1)]

    @field_validator("models", "destinations")
    @classmethod
    def _known(cls, value: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        """Names defined elsewhere: checked against the validation context's entry of the
        same name when there is one (:func:`parse_config` passes both)."""
        known = (info.context or {}).get(info.field_name)
        if known is None:
            return value
        listed = ", ".join(sorted(known)) or "none"
        kind = str(info.field_name).removesuffix("s")
        unknown = [
            ((j,), f"unknown {kind} '{name}' (known: {listed})")
            for j, name in enumerate(value)
            if name not in known
        ]
        if unknown:
            raise _invalid("RuleConfig", unknown)
        return value

    @field_validator("models")
    @classmethod
    def _unique(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(value)) != len(value):
            raise ValueError("a model may appear only once in a rule")
        return value


class GatewayConfig(Frozen):
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
    qa: QaConfig = QaConfig()
    http: HttpConfig = HttpConfig()
    monitor: MonitorConfig = MonitorConfig()
    alerts: AlertsConfig = AlertsConfig()
    rules: tuple[RuleConfig, ...] = ()
    # Clinic ROI naming: model label name (case-insensitive) -> clinic name, colour and type.
    # Entries here extend and override the built-in TG-263 names (gateway.contour.structures).
    roi_names: dict[str, RoiSpec] = Field(default_factory=dict)
    # Filled by the loader from paths.models.
    models: dict[str, ModelSpec] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _cross_checks(self) -> GatewayConfig:
        from gateway.contour.structures import plan_structures

        problems: list[tuple[tuple[str | int, ...], str]] = []
        allowed = {p.ae_title for p in self.peers}
        for i, ae in enumerate(self.qa.peers):
            if ae not in allowed:
                problems.append(
                    (("qa", "peers", i), f"'{ae}' is not among the gateway's peers: add it there")
                )
        names = [r.name for r in self.rules]
        for i, name in enumerate(names):
            if names.index(name) != i:
                problems.append((("rules", i, "name"), f"duplicate rule name '{name}'"))
        for i, rule in enumerate(self.rules):
            if all(m in self.models for m in rule.models):  # else reported as unknown models
                try:
                    plan_structures(rule, self.models, self.roi_names)
                except ValueError as exc:
                    problems.append((("rules", i, "prefer"), str(exc)))
        if problems:
            raise _invalid("GatewayConfig", problems)
        return self


# ---------------------------------------------------------------------------------------------
# Loading


def parse_config(
    raw: Mapping[str, Any], base_dir: Path, overrides: Mapping[str, Any] | None = None
) -> GatewayConfig:
    """Validate a config mapping with the models under ``paths.models``; relative paths are
    taken relative to ``base_dir``. Raises ConfigError with every problem found."""
    data = _deep_merge(dict(raw), dict(overrides or {}))
    problems: list[tuple[str, str]] = []
    models: dict[str, ModelSpec] | None = None
    raw_paths = data.get("paths")
    models_dir = raw_paths.get("models") if isinstance(raw_paths, Mapping) else None
    try:
        models = load_models(_resolve(base_dir, Path(str(models_dir or PathsConfig().models))))
    except ConfigError as exc:
        problems.extend(exc.problems)
    dests = data.get("destinations")
    known = {"models": models, "destinations": dests if isinstance(dests, Mapping) else {}}
    try:
        cfg = GatewayConfig.model_validate({**data, "models": models or {}}, context=known)
    except ValidationError as exc:
        raise ConfigError(validation_problems(exc) + problems) from None
    paths = cfg.paths.model_copy(
        update={
            k: _resolve(base_dir, getattr(cfg.paths, k))
            for k in ("spool", "output", "models", "returned")
        }
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
    http, http_problems = resolve_http(cfg.http, listen.tls, base_dir, _resolve_files)
    problems.extend(http_problems)
    tls_sections: list[tuple[str, Any]] = [("listen.tls", listen.tls), ("http.tls", http.tls)] + [
        (f"destinations.{n}.tls", d.tls) for n, d in destinations.items()
    ]
    for where, tls in tls_sections:
        for f in ("certificate", "private_key", "ca_certificates"):
            path = getattr(tls, f, None) if tls is not None else None
            if path is not None and not path.is_file():
                problems.append((f"{where}.{f}", f"{path} not found"))
    if problems:
        raise ConfigError(problems)
    return cfg.model_copy(
        update={
            "paths": paths,
            "listen": listen,
            "destinations": destinations,
            "queue": queue,
            "http": http,
            "database": cfg.database.model_copy(update={"url": db_url}),
        }
    )


def load_config(path: Path, overrides: Mapping[str, Any] | None = None) -> GatewayConfig:
    """Read ``config.yaml`` and every ``models/*/model.yaml``; raise ConfigError on problems."""
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError([(str(path), "top level must be a mapping")])
    return parse_config(raw, path.resolve().parent, overrides)


def _resolve(base: Path, p: Path) -> Path:
    return p if p.is_absolute() else (base / p).resolve()


def _resolve_files(base: Path, tls: Any) -> Any:
    """A TLS section with its certificate/key paths resolved against ``base``."""
    fields = ("certificate", "private_key", "ca_certificates")
    return tls.model_copy(
        update={
            f: _resolve(base, getattr(tls, f)) for f in fields if getattr(tls, f, None) is not None
        }
    )


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out
