"""Run a job's models: read each model's input series once, resample them onto the model's
primary grid, then run the models one after another, each kept warm by the
:class:`~gateway.segment.SegmenterCache`.

A model is used by one job at a time in a process (``ModelSlots``); the time a job waits for
another job's use of the same model is recorded as ``wait_s``, apart from the model's own run
(``segment_s``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import SimpleITK as sitk

from gateway.config import GatewayConfig, RuleConfig
from gateway.db.database import Store
from gateway.db.records import JobState
from gateway.errors import GatewayError, PermanentError
from gateway.failpoints import CrashPoints
from gateway.imaging import Volume, channels_on, labels_onto
from gateway.job import JobOutcome, ModelOutcome, ModelState, RoiOutcome
from gateway.segment.base import Grid
from gateway.segment.spec import ModelSpec

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from gateway.contour.outputs import Outputs
    from gateway.contour.rtstruct import Structure

log = logging.getLogger(__name__)


class ModelSlots:
    """One lock per model name: a warm model serves one job at a time in this process."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}

    def __call__(self, model: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(model, threading.Lock())


@dataclass
class ModelsRun:
    """What the models made: label maps on the reference series, and each model's outcome."""

    reference: Volume | None = None
    reference_key: str = ""  # the image set (a key of the job's plan) of ``reference``
    label_maps: dict[str, np.ndarray] = field(default_factory=dict)
    outcomes: dict[str, ModelOutcome] = field(default_factory=dict)


def run_models(
    plan: Mapping[str, Sequence[str]],
    models: Mapping[str, ModelSpec],
    read: Callable[[str], Volume],
    segmenters: object,
    slots: ModelSlots,
    *,
    crash: CrashPoints | None = None,
    after_volumes: Callable[[], None] = lambda: None,
) -> ModelsRun:
    """Run every model of ``plan`` (model -> series UIDs per channel) on its inputs.

    ``read`` turns a series UID into a volume (called once per series). A model whose inputs
    cannot be read or that fails gets a failed outcome; the others still run. The first model
    that ran sets the reference series; later models' label maps are moved onto it.
    """
    crash = crash or CrashPoints()
    volumes: dict[str, Volume] = {}

    def volume(uid: str) -> Volume:
        if uid not in volumes:
            volumes[uid] = read(uid)
        return volumes[uid]

    out = ModelsRun()
    inputs: dict[str, tuple[Volume, list[np.ndarray], float]] = {}
    for name, series in plan.items():
        t0 = time.perf_counter()
        try:
            primary, arrays = channels_on([volume(u) for u in series], models[name].primary_index)
        except PermanentError as exc:
            out.outcomes[name] = ModelOutcome(state=ModelState.FAILED, reason=str(exc))
            log.warning("inputs of model %s unusable: %s", name, exc)
            continue
        inputs[name] = (primary, arrays, time.perf_counter() - t0)
    after_volumes()
    for name, (primary, arrays, volume_s) in inputs.items():
        model = models[name]
        t0 = time.perf_counter()
        try:
            with slots(name):
                t1 = time.perf_counter()
                crash.hit("job.segment")
                label_map = segmenters.get(model).predict(  # type: ignore[attr-defined]
                    arrays, Grid.of(primary.image)
                )
            t2 = time.perf_counter()
            if out.reference is None:
                out.reference = primary
                out.reference_key = plan[name][model.primary_index]
            out.label_maps[name] = labels_onto(label_map, primary, out.reference)
        except PermanentError as exc:
            out.outcomes[name] = ModelOutcome(state=ModelState.FAILED, reason=str(exc))
            log.warning("model %s failed: %s", name, exc)
            continue
        out.outcomes[name] = ModelOutcome(
            state=ModelState.DONE,
            provenance=model.provenance,
            input_series=tuple(plan[name]),
            volume_s=round(volume_s, 3),
            wait_s=round(t1 - t0, 3),
            segment_s=round(t2 - t1, 3),
        )
    return out


def structures_of(cfg: GatewayConfig, rule: RuleConfig, run: ModelsRun) -> list[Structure]:
    """The rule's structures made from ``run``'s label maps (clinic names, the preferred model
    where two make the same ROI)."""
    from gateway.contour import rtstruct
    from gateway.contour.structures import plan_structures

    maps, models = run.label_maps, cfg.models
    planned = plan_structures(rule, models, cfg.roi_names, available=maps)
    return [
        rtstruct.Structure(maps[p.model] == p.label, p.roi, models[p.model].provenance)
        for p in planned
    ]


def structure_set(
    cfg: GatewayConfig,
    rule: RuleConfig,
    run: ModelsRun,
    runnable: Mapping[str, Sequence[str]],
) -> tuple[list[Structure], Dataset]:
    """The rule's structures and the one RTSTRUCT holding them on the reference series
    (``runnable``: model -> the series it read, as in the job's plan)."""
    from gateway.contour import rtstruct

    assert run.reference is not None
    structures = structures_of(cfg, rule, run)
    ds = rtstruct.build_structure_set(
        run.reference, structures, cfg.rtstruct, input_series_uids=_used(run, runnable)
    )
    return structures, ds


def _used(run: ModelsRun, runnable: Mapping[str, Sequence[str]]) -> list[str]:
    """The image sets the models that ran read (with the study and models, they fix the output
    UIDs)."""
    return list(dict.fromkeys(u for m in run.label_maps for u in runnable[m]))


def job_outputs(
    cfg: GatewayConfig,
    rule: RuleConfig,
    run: ModelsRun,
    runnable: Mapping[str, Sequence[str]],
    sources: Mapping[str, Path],
) -> tuple[list[Structure], Outputs]:
    """The structures and every output the rule's destinations take (a SEG only when one of
    them has ``seg`` among its ``outputs``); ``sources``: the reference's files."""
    from gateway.contour.outputs import build_outputs

    structures = structures_of(cfg, rule, run)
    assert run.reference is not None
    seg = any(
        "seg" in cfg.destinations[d].outputs for d in rule.destinations if d in cfg.destinations
    )
    outputs = build_outputs(
        run.reference,
        structures,
        cfg.rtstruct,
        input_series_uids=_used(run, runnable),
        seg=seg,
        sources=sources,
    )
    return structures, outputs


class _Cancelled(Exception):
    """The job was cancelled while it ran: stop at this stage, deliver nothing."""


def write_preview(reference: Volume, structures: Sequence[Structure], path: Path) -> Path | None:
    """The contour preview PNG of a structure set at ``path``, from the volumes already in
    memory; None (logged) when it cannot be made: a preview never fails a job."""
    from gateway.contour import preview

    try:
        png = preview.render(
            sitk.GetArrayViewFromImage(reference.image),
            reference.image.GetSpacing(),
            [preview.PreviewRoi(st.roi.name, st.roi.color, st.mask) for st in structures],
        )
        path.write_bytes(png)
    except Exception as exc:
        log.warning("contour preview %s not made: %s: %s", path.name, type(exc).__name__, exc)
        return None
    return path


class JobRunner:
    """The run stage of a job: claim it under a lease, read its volumes, run its models, build
    and write the RTSTRUCT, record the typed outcome and open the deliveries."""

    def __init__(
        self,
        cfg: GatewayConfig,
        store: Store,
        segmenters: object,
        dispatch: Any,
        *,
        owner: str,
        clock: Callable[[], float],
        crash: CrashPoints,
    ):
        self.cfg = cfg
        self.store = store
        self.segmenters = segmenters
        self.dispatch = dispatch
        self.owner = owner
        self.clock = clock
        self.crash = crash
        self.slots = ModelSlots()

    # -- segment + RTSTRUCT --------------------------------------------------------------------

    def run(self, job_id: int) -> None:
        if not self.store.claim_job(job_id, self.owner, self.clock(), self.cfg.queue.lease_s):
            return
        try:
            self._run(job_id)
        except _Cancelled:
            self.store.release_job(job_id)
            log.info("job %d: cancelled while it ran; stopped, nothing delivered", job_id)
        except PermanentError as exc:
            self._fail(job_id, str(exc))
        except GatewayError as exc:
            self._fail(job_id, f"{type(exc).__name__}: {exc}")
        except Exception as exc:
            log.exception("job %d: unexpected error", job_id)
            self._fail(job_id, f"internal error: {type(exc).__name__}: {exc}")

    def _fail(self, job_id: int, reason: str) -> None:
        log.warning("job %d failed: %s", job_id, reason)
        self.store.fail_job(job_id, reason, self.clock())

    def _run(self, job_id: int) -> None:
        from gateway import imaging

        job = self.store.job(job_id)
        assert job is not None
        study = self.store.study(job.study_uid)
        if study is None:
            raise PermanentError("the study's records are gone (purged?)")
        rule = next(r for r in self.cfg.rules if r.name == job.rule)
        plan = job.job_plan

        def read(key: str) -> imaging.Volume:
            series = next((s for s in study.series if s.key == key), None)
            if series is None:
                raise PermanentError(f"input series {key} is no longer recorded")
            return imaging.read_image_set(series)

        run = run_models(
            plan.runnable,
            self.cfg.models,
            read,
            self.segmenters,
            self.slots,
            crash=self.crash,
            after_volumes=lambda: self._stage(job_id, "volume"),
        )
        self._stage(job_id, "segment")
        outcomes: dict[str, ModelOutcome] = {
            m: ModelOutcome(state=ModelState.REFUSED, reason=r) for m, r in plan.refused.items()
        }
        outcomes.update(run.outcomes)
        partial = "; ".join(
            f"{m}: {o.reason}" for m, o in outcomes.items() if o.state is not ModelState.DONE
        )
        if run.reference is None:
            outcome = JobOutcome(models=outcomes, partial=partial)
            self.store.fail_job(
                job_id, partial or "no model produced a result", self.clock(), outcome
            )
            log.warning("job %d failed: %s", job_id, partial or "no model produced a result")
            return
        t0 = time.perf_counter()
        reference = next(s for s in study.series if s.key == run.reference_key)
        structures, outputs = job_outputs(
            self.cfg,
            rule,
            run,
            plan.runnable,
            {uid: Path(p) for uid, p in reference.paths.items()},
        )
        ds = outputs.rtstruct
        partial = "; ".join(p for p in (partial, *outputs.problems) if p)
        artifacts = outputs.write(self.cfg.paths.output / job.study_uid)
        out = Path(next(a.path for a in artifacts if a.kind == "rtstruct"))
        spacing = run.reference.image.GetSpacing()
        outcome = JobOutcome(
            models=outcomes,
            rois=tuple(
                RoiOutcome(
                    name=st.roi.name,
                    provenance=st.provenance,
                    volume_cc=round(imaging.volume_cc(st.mask, spacing), 2),
                )
                for st in structures
            ),
            reference_series=outputs.reference.series_instance_uid,
            reference_key=run.reference_key,
            merge_s=round(time.perf_counter() - t0, 3),
            partial=partial,
            artifacts=artifacts,
        )
        preview = write_preview(run.reference, structures, out.with_suffix(".png"))
        ids = self.store.finish_run(
            job_id,
            outcome,
            str(ds.SOPInstanceUID),
            str(out),
            rule.destinations,
            self.clock(),
            preview_path=str(preview) if preview else None,
        )
        if ids is None:
            raise _Cancelled
        log.info(
            "job %d study %s: RTSTRUCT %s built (%d ROIs from %s), delivering to %d destination(s)",
            job_id,
            job.study_uid,
            ds.SOPInstanceUID,
            len(structures),
            ", ".join(run.label_maps),
            len(ids),
        )
        for delivery_id in ids:
            self.dispatch.deliver(delivery_id)

    def _stage(self, job_id: int, stage: str) -> None:
        job = self.store.update_job(job_id, stage=stage, now=self.clock())
        if job.state == JobState.CANCELLED.value:
            raise _Cancelled
