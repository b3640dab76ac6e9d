"""The typed job: what a job will do (:class:`JobPlan`, fixed when its inputs are complete) and
what it did (:class:`JobOutcome`, written when its structure set is built). Both travel between
the stages through the database as JSON and are loaded back with ``model_validate``; nothing
else about a job's work is kept in untyped dicts.

Stage timestamps (``JobRow.stages``, seconds since the epoch) are written once, when each stage
ends: ``received_first`` / ``received_last`` (the first and last arrival of the instances this
job's inputs hold, fixed when the job is ready), ``ready``, ``started``, ``volume``, ``segment``,
``rtstruct``, ``delivered`` (or ``failed``). Waiting for a model that another job is using is
recorded per model (``ModelOutcome.wait_s``), apart from the model's own run (``segment_s``).
"""

from __future__ import annotations

import enum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.dataclasses import dataclass


@dataclass(frozen=True)
class Provenance:
    """Which model made a contour: name, version and the SHA-256 over its weight files. One
    object from the model registry into the RTSTRUCT, the audit and ``aircon jobs``."""

    model_name: str
    model_version: str
    weights_sha256: str = ""

    @property
    def label(self) -> str:
        return f"{self.model_name} {self.model_version}".strip()


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ModelPlan(_Frozen):
    """One model of a rule: the series used for each input channel (in channel order), or why it
    will not run."""

    series: tuple[str, ...] = ()
    refused: str = ""


class JobPlan(_Frozen):
    """A rule's models in rule order, fixed when the job's inputs are complete."""

    models: dict[str, ModelPlan] = Field(default_factory=dict)

    @property
    def runnable(self) -> dict[str, tuple[str, ...]]:
        return {m: p.series for m, p in self.models.items() if not p.refused}

    @property
    def refused(self) -> dict[str, str]:
        return {m: p.refused for m, p in self.models.items() if p.refused}

    @property
    def series_used(self) -> list[str]:
        return list(dict.fromkeys(u for s in self.runnable.values() for u in s))


class ModelState(str, enum.Enum):
    DONE = "done"
    FAILED = "failed"  # ran, or its inputs could not be read, and failed
    REFUSED = "refused"  # never ran: outside its intended use, inputs missing


class ModelOutcome(_Frozen):
    state: ModelState
    reason: str = ""
    provenance: Provenance | None = None
    input_series: tuple[str, ...] = ()
    volume_s: float = 0.0  # reading and resampling its inputs
    wait_s: float = 0.0  # queued behind another job using the same model
    segment_s: float = 0.0  # the model running


class RoiOutcome(_Frozen):
    name: str
    provenance: Provenance
    volume_cc: float


class Artifact(_Frozen):
    """One file a job made for its destinations: the RTSTRUCT, a DICOM SEG (``seg``), or an
    image of the classic copy of a multi-frame primary (``image``)."""

    kind: Literal["rtstruct", "seg", "image"]
    path: str
    uid: str  # its SOP Instance UID


class JobOutcome(_Frozen):
    models: dict[str, ModelOutcome] = Field(default_factory=dict)
    rois: tuple[RoiOutcome, ...] = ()
    reference_series: str = ""  # the Series Instance UID the structure set references
    reference_key: str = ""  # its image set (a key of the plan: "<uid>#<n>" for a channel)
    merge_s: float = 0.0
    partial: str = ""  # why a model of the rule did not contribute ("" when all did)
    artifacts: tuple[Artifact, ...] = ()  # in sending order (empty: the RTSTRUCT alone)

    def files_for(self, outputs: tuple[str, ...], rtstruct_path: str) -> list[str]:
        """The files a destination taking ``outputs`` gets, in sending order: the images the
        structure set and SEG reference (if copies were made), then those outputs."""
        if not self.artifacts:
            return [rtstruct_path] if "rtstruct" in outputs else []
        wanted = {*outputs, "image"}
        return [a.path for a in self.artifacts if a.kind in wanted]

    @property
    def ran(self) -> list[Provenance]:
        return [
            o.provenance
            for o in self.models.values()
            if o.state is ModelState.DONE and o.provenance is not None
        ]


# (stage, from timestamp, to timestamp): the spans :func:`stage_timings` and the metrics measure.
STAGE_SPANS = (
    ("receive", "received_first", "received_last"),
    ("assemble", "received_last", "ready"),
    ("queue", "ready", "started"),
    ("volume", "started", "volume"),
    ("segment", "volume", "segment"),
    ("rtstruct", "segment", "rtstruct"),
    ("send", "rtstruct", "delivered"),
    ("total", "received_last", "delivered"),
)


def stage_timings(stages: dict[str, float], outcome: JobOutcome | None = None) -> dict[str, float]:
    """Seconds per stage from a job's recorded stage timestamps (stages not reached are left
    out). ``wait`` is the time the job's models waited for another job's use of the same model;
    ``segment`` is the models' own run time (the volume -> segment span less that wait)."""
    out = {
        n: round(stages[b] - stages[a], 3) for n, a, b in STAGE_SPANS if a in stages and b in stages
    }
    if outcome is not None and "segment" in out:
        wait = round(sum(o.wait_s for o in outcome.models.values()), 3)
        out["wait"] = wait
        out["segment"] = round(max(0.0, out["segment"] - wait), 3)
    return out
