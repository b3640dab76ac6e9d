"""The model schema: ``models/<name>/model.yaml`` -> :class:`ModelSpec`, and the series selectors
that model inputs and routing rules share.

Pure schema: reading the models folder and hashing weights is :mod:`gateway.segment.registry`.
Nothing here imports :mod:`gateway.config` (which builds on these types).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from gateway.job import Provenance


def _check_regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"regular expression does not compile: {exc}") from None
    return value


Regex = Annotated[str, AfterValidator(_check_regex)]
RGB = Annotated[tuple[int, int, int], Field()]


class Frozen(BaseModel):
    """Immutable, and unknown keys are errors (a typo in YAML must not be ignored)."""

    model_config = ConfigDict(frozen=True, extra="forbid")


# ---------------------------------------------------------------------------------------------
# Series selection: shared by routing rules and model input channels


class Range(Frozen):
    """A numeric range; either end may be open."""

    min: float | None = None
    max: float | None = None

    def contains(self, value: float) -> bool:
        return (self.min is None or value >= self.min) and (self.max is None or value <= self.max)


# One condition on one attribute: a regular expression searched in the value (str), a set of
# items the (multi-valued) value must all contain (list), or a numeric range ({min, max}).
Condition = Regex | tuple[str, ...] | Range


class SeriesSelector(Frozen):
    """Conditions on a series' DICOM attributes, all of which must hold.

    Written in YAML as a mapping from DICOM keyword to a condition::

        Modality: "^MR$"                 # regular expression, searched (re.search)
        SeriesDescription: "(?i)t2.*tra"
        ImageType: [DIXON, WATER]        # the value contains all of these (case-insensitive)
        EchoTime: {min: 80, max: 130}    # a number in this range

    Multi-valued attributes are joined with ``\\`` for regular expressions. A missing attribute
    never matches.
    """

    conditions: dict[str, Condition] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _flat_mapping(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and "conditions" not in data:
            return {"conditions": dict(data)}
        return data

    # Before the values: a misspelt keyword (or the pre-release ``keywords:`` wrapper) is
    # reported as such, not as its value failing every kind of condition.
    @field_validator("conditions", mode="before")
    @classmethod
    def _keywords_are_dicom(cls, value: Any) -> Any:
        from pydicom.datadict import tag_for_keyword

        for key in value if isinstance(value, Mapping) else ():
            if tag_for_keyword(str(key)) is None:
                raise ValueError(f"'{key}' is not a DICOM keyword")
        return value


# ---------------------------------------------------------------------------------------------
# Models (models/<name>/model.yaml)


class CodeSpec(Frozen):
    """A coded concept (one item of a DICOM code sequence), written in YAML as
    ``{scheme: SCT, value: "41216001", meaning: Prostate}``."""

    scheme: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,16}$")]  # CodingSchemeDesignator
    value: Annotated[str, Field(min_length=1, max_length=16)]  # CodeValue (SH)
    meaning: Annotated[str, Field(min_length=1, max_length=64)]  # CodeMeaning (LO)

    @field_validator("value", mode="before")
    @classmethod
    def _number_as_text(cls, value: Any) -> Any:
        # YAML reads an unquoted SNOMED CT id as an int.
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


class RoiSpec(Frozen):
    """One ROI: clinic name, display colour, RTSTRUCT interpreted type and, for DICOM SEG, what it
    is as codes: ``code`` the segmented property type (e.g. SCT 41216001 Prostate) and
    ``category`` its category (default SCT 91723000 Anatomical Structure). Without a code a SEG
    uses a generic type (:mod:`gateway.contour.seg`)."""

    name: Annotated[str, Field(min_length=1, max_length=64)]
    color: RGB
    type: Literal[
        "ORGAN", "PTV", "CTV", "GTV", "AVOIDANCE", "EXTERNAL", "CAVITY", "CONTROL", "MARKER"
    ] = "ORGAN"
    code: CodeSpec | None = None
    category: CodeSpec | None = None

    @field_validator("color")
    @classmethod
    def _rgb(cls, value: tuple[int, int, int]) -> tuple[int, int, int]:
        if any(not 0 <= c <= 255 for c in value):
            raise ValueError("colour components must be 0-255")
        return value


class InputChannel(Frozen):
    """One model input, in the model's channel order.

    The ``primary`` channel's grid is the grid the model runs on and the series the RTSTRUCT
    references; the other channels are resampled onto it. Without an explicit primary the first
    channel is primary.
    """

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,32}$")]
    select: SeriesSelector
    primary: bool = False


class Guardrails(Frozen):
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


class NnUNetSpec(Frozen):
    folder: str = Field(description="nnU-Net v2 trained-model folder, relative to model.yaml")
    configuration: str = "3d_fullres"
    folds: tuple[int | Literal["all"], ...] = (0,)
    checkpoint: str = "checkpoint_final.pth"
    use_mirroring: bool = False
    tile_step_size: Annotated[float, Field(gt=0, le=1)] = 0.5


class CommandSpec(Frozen):
    """An external program. ``args`` may use ``{<channel name>}`` (that channel's NIfTI path),
    ``{output}`` (where the program must write the label map as NIfTI), ``{workdir}`` and
    ``{python}`` (this interpreter). The program runs without a shell, in ``workdir``."""

    args: Annotated[tuple[str, ...], Field(min_length=1)]
    timeout_s: Annotated[float, Field(gt=0)] = 600.0
    env: dict[str, str] = Field(default_factory=dict)


class PythonSpec(Frozen):
    """A function ``module:function`` called as ``function(channels, grid, **options)``; a module
    file in the model folder is found first, then installed packages. An optional
    ``module:warm_up`` is called once at start with the same options."""

    entry: Annotated[str, Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")]
    options: dict[str, Any] = Field(default_factory=dict)


class RoiAcceptance(Frozen):
    """Acceptance thresholds of one ROI for ``aircon validate`` (None: not checked)."""

    dice_min: Annotated[float, Field(ge=0, le=1)] | None = None
    hd95_max_mm: Annotated[float, Field(ge=0)] | None = None
    surface_dice_min: Annotated[float, Field(ge=0, le=1)] | None = None
    apl_max_mm: Annotated[float, Field(ge=0)] | None = None


class RoiBaseline(Frozen):
    """Control-chart baseline of one ROI (mean, standard deviation), e.g. from commissioning."""

    surface_dice: tuple[float, Annotated[float, Field(ge=0)]] | None = None
    apl_mm: tuple[float, Annotated[float, Field(ge=0)]] | None = None


class ModelQa(Frozen):
    """``qa:`` of a model.yaml. Keys are clinic ROI names; ``"*"`` applies to every ROI that has
    no entry of its own."""

    acceptance: dict[str, RoiAcceptance] = Field(default_factory=dict)
    baseline: dict[str, RoiBaseline] = Field(default_factory=dict)

    def acceptance_for(self, roi: str) -> RoiAcceptance:
        return self.acceptance.get(roi) or self.acceptance.get("*") or RoiAcceptance()

    def baseline_for(self, roi: str) -> RoiBaseline | None:
        return self.baseline.get(roi) or self.baseline.get("*")


class ModelSpec(Frozen):
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
    qa: ModelQa = ModelQa()
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

    @property
    def provenance(self) -> Provenance:
        """Name, version and weights hash: what every output records of this model."""
        return Provenance(self.name, self.version, self.weights_sha256)


class SegmentationConfig(Frozen):
    """How models run on this node (``segmentation:`` in config.yaml)."""

    # ``cuda:N`` pins one GPU by index (a worker per GPU); CUDA_VISIBLE_DEVICES does the same
    # from outside, and then the worker's one visible GPU is ``cuda``.
    device: Annotated[str, Field(pattern=r"^(auto|cpu|cuda(:[0-9]{1,2})?)$")] = "auto"
    threads: Annotated[int, Field(ge=1)] = 2


# ---------------------------------------------------------------------------------------------
# Errors by path


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


def validation_problems(exc: ValidationError, prefix: str = "") -> list[tuple[str, str]]:
    """A pydantic error as ``(path as written in the YAML, reason)`` pairs for ConfigError."""
    return [
        (f"{prefix}{_loc(tuple(err['loc']))}", err["msg"].removeprefix("Value error, "))
        for err in exc.errors()
    ]
