"""Assembly (pure): are a study's inputs ready for a rule's models, and if not, why not and until
when?

A model is ready when no association is still sending the study, every input channel has a
matching series, each such series has been quiet (no new instance) for ``series_quiet_s``, its
slices form one consistent volume, all channels
share the primary channel's frame of reference (no registration here), and the primary series is
within the model's guardrails. A model that is not ready ``study_timeout_s`` after its job was
opened fails with the reason; a model outside its guardrails, across frames of reference or whose
input series belong to different patients (their recorded patient keys differ) fails at once.
A rule's job runs when no model is still waiting; the models that failed are recorded and the
others run. Decisions depend only on the recorded instances and the clock passed in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from gateway.config import AssemblyConfig, ModelSpec
from gateway.db.records import SeriesInfo, StudyInfo
from gateway.study import guardrails
from gateway.study.geometry import check_volume
from gateway.study.routing import select_series, series_matches

# Storage classes we store but no model reads (a selector that picks one fails with the reason).
NOT_MODEL_INPUT = {
    "1.2.840.10008.5.1.4.1.1.4.2": "MR Spectroscopy",
    "1.2.840.10008.5.1.4.1.1.4.3": "Enhanced MR Color",
}


@dataclass(frozen=True)
class Ready:
    series: tuple[SeriesInfo, ...]  # one per channel, in channel order
    order: tuple[tuple[str, ...], ...]  # per channel: slice refs sorted along the normal


@dataclass(frozen=True)
class Waiting:
    reason: str
    recheck_at: float


@dataclass(frozen=True)
class Failed:
    reason: str


Decision = Ready | Waiting | Failed


def _label(i: int, name: str) -> str:
    return f"input {i} '{name}'"


def decide(
    model: ModelSpec,
    study: StudyInfo,
    *,
    opened_at: float,
    now: float,
    cfg: AssemblyConfig,
) -> Decision:
    """Whether ``study`` holds complete, usable inputs for ``model``."""
    deadline = opened_at + cfg.study_timeout_s
    if study.open_associations:
        # Never ready while being sent, however quiet a series looks; never failed for it either
        # (the idle timeout ends an association that stops sending).
        return Waiting(
            f"{study.open_associations} association(s) still sending this study", deadline
        )
    if study.interrupted_at is not None:
        resume_by = study.interrupted_at + cfg.interrupted_wait_s
        if now < resume_by:
            return Waiting(
                "the association that sent this study was cut off: waiting up to "
                f"{cfg.interrupted_wait_s:g} s for the sender to send it again",
                min(resume_by, deadline),
            )
    chosen: list[SeriesInfo] = []
    orders: list[tuple[str, ...]] = []
    spacings: list[float | None] = []
    waits: list[Waiting] = []
    for i, channel in enumerate(model.inputs):
        label = _label(i, channel.name)
        series = select_series(channel, study.series)
        if series is None:
            waits.append(Waiting(f"{label}: no matching series received", deadline))
            continue
        quiet_at = series.last_received_at + cfg.series_quiet_s
        if now < quiet_at:
            waits.append(Waiting(f"{label}: series still receiving", min(quiet_at, deadline)))
            continue
        number = series.attributes.get("SeriesNumber", "?")
        kind = NOT_MODEL_INPUT.get(str(series.attributes.get("SOPClassUID", "")))
        if kind:
            return Failed(f"{label}: series {number} is {kind}: not an image a model can read")
        unframed = [g for g in series.slices if (g.frames or 1) > 1 and g.frame is None]
        if unframed:
            return Failed(
                f"{label}: series {number} holds {len(unframed)} multi-frame instance(s) "
                "recorded without their frames (received before this release): send it again"
            )
        rivals = [
            s
            for s in study.series
            if s.series_uid == series.series_uid
            and s.key != series.key
            and series_matches(channel.select, s.attributes)
        ]
        if rivals:
            kinds = "; ".join(_kind(s) for s in (series, *rivals))
            return Failed(
                f"{label}: its selector matches {len(rivals) + 1} kinds of frames of series "
                f"{number} ({kinds}): name one (e.g. ImageType [DIXON, WATER])"
            )
        check = check_volume(series.slices)
        whole = len({g.sop_instance_uid for g in series.slices}) == 1
        if not check.ok and whole and series.slices[0].frame is not None:
            # A multi-frame object arrives whole: no later instance mends its frames. (Frames
            # from several objects wait, as a classic series does, for the rest to arrive.)
            return Failed(
                f"{label}: series {number}{_part(series)} is not one volume: "
                + "; ".join(check.problems)
            )
        if not check.ok:
            waits.append(
                Waiting(
                    f"{label}: series {number} is not one volume: {'; '.join(check.problems)}",
                    deadline,
                )
            )
            continue
        chosen.append(series)
        orders.append(check.order)
        spacings.append(check.slice_spacing)
    if waits:
        reason = "; ".join(w.reason for w in waits)
        if now >= deadline:
            return Failed(f"not ready after {cfg.study_timeout_s:g} s: {reason}")
        return Waiting(reason, min(w.recheck_at for w in waits))

    # A series recorded before patient keys existed has none: it is not compared.
    if len({s.patient_key for s in chosen if s.patient_key}) > 1:
        return Failed(
            "input series belong to different patients (PatientID/IssuerOfPatientID differ)"
        )
    p = model.primary_index
    primary_frame = _frame(chosen[p])
    problems: list[str] = []
    for i, (channel, series) in enumerate(zip(model.inputs, chosen, strict=True)):
        if i != p and _frame(series) != primary_frame:
            problems.append(
                f"{_label(i, channel.name)}: series {series.attributes.get('SeriesNumber', '?')} "
                f"is in another frame of reference than '{model.inputs[p].name}' "
                "(no registration: both must share a FrameOfReferenceUID)"
            )
        problems += guardrails.check(
            model.guardrails, channel.name, series, spacings[i], primary=i == p
        )
    if problems:
        return Failed("outside the model's intended use: " + "; ".join(problems))
    return Ready(tuple(chosen), tuple(orders))


def _kind(series: SeriesInfo) -> str:
    """A channel in words: its frame type and what else sets it apart."""
    attrs = series.attributes
    kind = attrs.get("ImageType")
    words = ["\\".join(str(v) for v in kind) if isinstance(kind, list | tuple) else str(kind)]
    for keyword, short in (("EchoTime", "TE"), ("DiffusionBValue", "b"), ("InversionTime", "TI")):
        if attrs.get(keyword) is not None:
            words.append(f"{short} {attrs[keyword]}")
    return " ".join(words)


def _part(series: SeriesInfo) -> str:
    """Which frames of a multi-frame series an image set is, for a reason a user reads."""
    if not series.part:
        return ""
    kind = series.attributes.get("ImageType")
    shown = "\\".join(str(v) for v in kind) if isinstance(kind, list | tuple) else kind
    return f" (frames of type {shown})" if shown else f" (channel {series.part})"


def _frame(series: SeriesInfo) -> str | None:
    frames = {s.frame_of_reference_uid for s in series.slices}
    return frames.pop() if len(frames) == 1 else None


@dataclass(frozen=True)
class RuleDecision:
    """A rule's job: still ``waiting`` (with reason and when to look again), or settled into
    the models that can run (``ready``) and those that cannot (``failed``, with reasons)."""

    ready: Mapping[str, Ready]
    failed: Mapping[str, str]
    waiting: Waiting | None = None


def decide_rule(
    models: Sequence[ModelSpec],
    study: StudyInfo,
    *,
    opened_at: float,
    now: float,
    cfg: AssemblyConfig,
) -> RuleDecision:
    """Decide every model of a rule; the job waits while any model is still waiting."""
    ready: dict[str, Ready] = {}
    failed: dict[str, str] = {}
    waits: list[tuple[str, Waiting]] = []
    for model in models:
        d = decide(model, study, opened_at=opened_at, now=now, cfg=cfg)
        if isinstance(d, Ready):
            ready[model.name] = d
        elif isinstance(d, Failed):
            failed[model.name] = d.reason
        else:
            waits.append((model.name, d))
    if waits:
        reason = "; ".join(f"{name}: {w.reason}" for name, w in waits)
        return RuleDecision(ready, failed, Waiting(reason, min(w.recheck_at for _, w in waits)))
    return RuleDecision(ready, failed)
