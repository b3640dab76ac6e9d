"""Assembly (pure): is a study ready for a model, and if not, why not and until when?

A study is ready for a model when every input channel has a matching series, each such series has
been quiet (no new instance) for ``series_quiet_s``, and its slices form one consistent volume.
A study that is not ready ``study_timeout_s`` after its job was opened fails with the reason.
Decisions depend only on the recorded instances and the clock passed in.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.config import AssemblyConfig, ModelSpec
from gateway.geometry import check_volume
from gateway.routing import select_series
from gateway.store import SeriesInfo, StudyInfo


@dataclass(frozen=True)
class Ready:
    series: tuple[SeriesInfo, ...]  # one per channel, in channel order
    order: tuple[tuple[str, ...], ...]  # per channel: SOP Instance UIDs sorted along the normal


@dataclass(frozen=True)
class Waiting:
    reason: str
    recheck_at: float


@dataclass(frozen=True)
class Failed:
    reason: str


Decision = Ready | Waiting | Failed


def decide(
    model: ModelSpec,
    study: StudyInfo,
    *,
    opened_at: float,
    now: float,
    cfg: AssemblyConfig,
) -> Decision:
    deadline = opened_at + cfg.study_timeout_s
    chosen: list[SeriesInfo] = []
    orders: list[tuple[str, ...]] = []
    waits: list[Waiting] = []
    for i, channel in enumerate(model.inputs):
        label = f"input {i} '{channel.name}'"
        series = select_series(channel, study.series)
        if series is None:
            waits.append(Waiting(f"{label}: no matching series received", deadline))
            continue
        quiet_at = series.last_received_at + cfg.series_quiet_s
        if now < quiet_at:
            waits.append(Waiting(f"{label}: series still receiving", min(quiet_at, deadline)))
            continue
        check = check_volume(series.slices)
        if not check.ok:
            number = series.attributes.get("SeriesNumber", "?")
            waits.append(
                Waiting(
                    f"{label}: series {number} is not one volume: {'; '.join(check.problems)}",
                    deadline,
                )
            )
            continue
        chosen.append(series)
        orders.append(check.order)
    if not waits:
        return Ready(tuple(chosen), tuple(orders))
    reason = "; ".join(w.reason for w in waits)
    if now >= deadline:
        return Failed(f"not ready after {cfg.study_timeout_s:g} s: {reason}")
    return Waiting(reason, min(w.recheck_at for w in waits))
