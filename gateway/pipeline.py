"""The pipeline: the only sequencer of a study's stages.

    check_study  route -> assemble: open a job, wait for its inputs, queue it (or fail it)
    run_job      build volumes -> segment -> build RTSTRUCT -> open deliveries
    deliver      C-STORE one RTSTRUCT to one destination, with backoff, parked after max_attempts

The database is the durable truth; a :class:`Dispatcher` (the task queue) only says *when* a step
runs next. After a restart :meth:`Pipeline.recover` re-dispatches everything unfinished, and each
step claims its row first, so a step dispatched twice runs once.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from gateway.config import GatewayConfig, ModelSpec
from gateway.db.database import JobRow, Store
from gateway.db.records import TERMINAL, DeliveryState, JobState, StudyInfo, StudyTimes
from gateway.errors import (
    GatewayError,
    InvalidInput,
    PeerUnavailable,
    PermanentError,
    RetriableError,
)
from gateway.failpoints import CrashPoints
from gateway.segment.base import Grid
from gateway.study import assembly, routing

log = logging.getLogger(__name__)


class Dispatcher(Protocol):
    """Where the pipeline hands its next steps (the task queue, or inline in tests)."""

    def check_study(self, study_uid: str, delay: float = 0.0) -> None: ...
    def run_job(self, job_id: int) -> None: ...
    def deliver(self, delivery_id: int, delay: float = 0.0) -> None: ...


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Exponential backoff with +-20% jitter: base, 2 base, 4 base, ... capped at ``cap``."""
    rng = rng or random.Random()
    return min(cap, base * 2 ** max(0, attempt - 1)) * rng.uniform(0.8, 1.2)


def stage_timings(job: JobRow, study: StudyTimes | StudyInfo | None) -> dict[str, float]:
    """Seconds spent per stage, from the recorded timestamps (missing stages are left out)."""
    st = dict(job.stages)
    if study is not None:
        st.setdefault("received_first", study.first_received_at)
        st.setdefault("received_last", min(study.last_received_at, st.get("ready", 1e18)))
    spans = [
        ("receive", "received_first", "received_last"),
        ("assemble", "received_last", "ready"),
        ("queue", "ready", "started"),
        ("volume", "started", "volume"),
        ("segment", "volume", "segment"),
        ("rtstruct", "segment", "rtstruct"),
        ("send", "rtstruct", "delivered"),
        ("total", "received_last", "delivered"),
    ]
    return {name: round(st[b] - st[a], 3) for name, a, b in spans if a in st and b in st}


class Pipeline:
    def __init__(
        self,
        cfg: GatewayConfig,
        store: Store,
        dispatcher: Dispatcher,
        segmenters: Any = None,
        clock: Any = time.time,
        crash: CrashPoints | None = None,
    ):
        self.cfg = cfg
        self.store = store
        self.dispatch = dispatcher
        self.clock = clock
        self.crash = crash or CrashPoints()
        if segmenters is None:
            from gateway.segment import SegmenterCache

            segmenters = SegmenterCache(cfg.segmentation)
        self.segmenters = segmenters
        self._check_lock = threading.Lock()

    # -- assemble --------------------------------------------------------------------------------

    def check_study(self, study_uid: str) -> None:
        with self._check_lock:
            self._check_study(study_uid, self.clock())

    def _check_study(self, study_uid: str, now: float) -> None:
        study = self.store.study(study_uid)
        if study is None:
            return
        rule = routing.route(self.cfg.rules, study)
        if rule is None:
            log.info("study %s: no rule matches; kept, not processed", study_uid)
            return
        jobs = self.store.jobs_for(study_uid, rule.name)
        last = jobs[-1] if jobs else None
        if last is not None and last.state != JobState.WAITING.value:
            if last.state not in TERMINAL:
                # Busy with earlier input: look again once it is done.
                self.dispatch.check_study(
                    study_uid, delay=max(1.0, self.cfg.assembly.series_quiet_s)
                )
                return
            # The job's inputs were fixed when it became ready (or failed waiting); only an
            # instance received after that is new. (Not created_at: a job opens while a
            # second association may still be sending.)
            decided = last.stages.get("ready", last.stages.get("failed", last.created_at))
            if decided >= study.last_received_at:
                return  # nothing new since that job
            last = None
        job = last or self.store.create_job(study_uid, rule.name, ",".join(rule.models), now)
        models = [self.cfg.models[m] for m in rule.models]
        decision = assembly.decide_rule(
            models, study, opened_at=job.created_at, now=now, cfg=self.cfg.assembly
        )
        if decision.waiting is not None:
            self.store.update_job(job.id, reason=decision.waiting.reason)
            self.dispatch.check_study(study_uid, delay=max(0.5, decision.waiting.recheck_at - now))
            return
        refused = "; ".join(f"{m}: {r}" for m, r in decision.failed.items())
        if not decision.ready:
            self.store.update_job(
                job.id, state=JobState.FAILED, reason=refused, stage="failed", now=now
            )
            log.warning("job %d study %s failed: %s", job.id, study_uid, refused)
            self._audit_job(job.id, "failed", refused)
            return
        plan = {
            name: [s.series_uid for s in ready.series] for name, ready in decision.ready.items()
        }
        series_used = list(dict.fromkeys(uid for uids in plan.values() for uid in uids))
        self.store.update_job(
            job.id,
            state=JobState.QUEUED,
            reason=refused,
            stage="ready",
            now=now,
            input_series=series_used,
            results={
                "plan": plan,
                "models": {
                    m: {"state": "refused", "reason": r} for m, r in decision.failed.items()
                },
            },
        )
        log.info(
            "job %d study %s: inputs complete, queued for %s%s",
            job.id,
            study_uid,
            ", ".join(plan),
            f" (not run: {', '.join(decision.failed)})" if decision.failed else "",
        )
        self.crash.hit("job.queued")
        self.dispatch.run_job(job.id)

    # -- segment + RTSTRUCT ----------------------------------------------------------------------

    def run_job(self, job_id: int) -> None:
        if not self.store.claim_job(job_id, JobState.QUEUED, JobState.RUNNING):
            return
        self.store.update_job(job_id, stage="started")
        try:
            self._run(job_id)
        except PermanentError as exc:
            self._fail(job_id, str(exc))
        except GatewayError as exc:
            self._fail(job_id, f"{type(exc).__name__}: {exc}")
        except Exception as exc:
            log.exception("job %d: unexpected error", job_id)
            self._fail(job_id, f"internal error: {type(exc).__name__}: {exc}")

    def _fail(self, job_id: int, reason: str) -> None:
        log.warning("job %d failed: %s", job_id, reason)
        self.store.update_job(job_id, state=JobState.FAILED, reason=reason, stage="failed")
        self._audit_job(job_id, "failed", reason)

    def _audit_job(self, job_id: int, outcome: str, detail: str) -> None:
        job = self.store.job(job_id)
        if job is None:
            return
        ran = {
            m: o for m, o in (job.results.get("models") or {}).items() if o.get("state") == "done"
        }
        self.store.audit(
            "job",
            outcome,
            study_uid=job.study_uid,
            job_id=job_id,
            instances=0,
            series_uid=",".join(job.input_series)[:64],
            model=", ".join(f"{m} {o.get('version', '')}".strip() for m, o in ran.items())
            or job.model,
            detail=f"rule {job.rule}" + (f": {detail}" if detail else ""),
        )

    @staticmethod
    def _series_paths(study: StudyInfo, series_uid: str) -> list[Path]:
        series = next(s for s in study.series if s.series_uid == series_uid)
        return [Path(p) for p in series.paths.values()]  # read_series sorts along the normal

    def _run(self, job_id: int) -> None:
        from gateway import imaging
        from gateway.contour import rtstruct
        from gateway.contour.structures import plan_structures

        job = self.store.job(job_id)
        assert job is not None
        study = self.store.study(job.study_uid)
        assert study is not None
        rule = next(r for r in self.cfg.rules if r.name == job.rule)
        plan: dict[str, list[str]] = dict(job.results.get("plan") or {})
        if not plan:  # a job queued before multi-model plans: its one model, its input series
            plan = {job.model: list(job.input_series)}
        outcomes: dict[str, dict[str, Any]] = dict(job.results.get("models") or {})
        volumes: dict[str, imaging.Volume] = {}

        def volume(series_uid: str) -> imaging.Volume:
            if series_uid not in volumes:
                volumes[series_uid] = imaging.read_series(self._series_paths(study, series_uid))
            return volumes[series_uid]

        # Every model's inputs first (read once per series, resampled onto its primary grid),
        # then the models one after another (each kept warm by the segmenter cache).
        inputs: dict[str, tuple[Any, list[np.ndarray], float]] = {}
        for name, series_uids in plan.items():
            model = self.cfg.models[name]
            t0 = time.perf_counter()
            try:
                primary, arrays = self._inputs(model, [volume(u) for u in series_uids])
            except PermanentError as exc:
                outcomes[name] = {"state": "failed", "reason": str(exc)}
                log.warning("job %d: inputs of model %s unusable: %s", job_id, name, exc)
                continue
            inputs[name] = (primary, arrays, time.perf_counter() - t0)
        self.store.update_job(job_id, stage="volume")
        reference: imaging.Volume | None = None
        label_maps: dict[str, np.ndarray] = {}
        for name, (primary, arrays, volume_s) in inputs.items():
            model = self.cfg.models[name]
            t1 = time.perf_counter()
            try:
                self.crash.hit("job.segment")
                label_map = self.segmenters.get(model).predict(arrays, Grid.of(primary.image))
                if reference is None:
                    reference = primary
                label_maps[name] = self._onto(label_map, primary, reference, name)
            except PermanentError as exc:
                outcomes[name] = {"state": "failed", "reason": str(exc)}
                log.warning("job %d: model %s failed: %s", job_id, name, exc)
                continue
            outcomes[name] = {
                "state": "done",
                "version": model.version,
                "weights_sha256": model.weights_sha256,
                "input_series": plan[name],
                "volume_s": round(volume_s, 3),
                "segment_s": round(time.perf_counter() - t1, 3),
            }
        self.store.update_job(job_id, stage="segment")
        not_run = {m: o["reason"] for m, o in outcomes.items() if o["state"] != "done"}
        partial = "; ".join(f"{m}: {r}" for m, r in not_run.items())
        if reference is None:
            raise PermanentError(partial or "no model produced a result")

        t0 = time.perf_counter()
        planned = plan_structures(rule, self.cfg.models, self.cfg.roi_names, available=label_maps)
        structures = [
            rtstruct.Structure(
                label_maps[p.model] == p.label,
                p.roi,
                rtstruct.Provenance(
                    p.model,
                    self.cfg.models[p.model].version,
                    self.cfg.models[p.model].weights_sha256,
                ),
            )
            for p in planned
        ]
        used = [u for m in label_maps for u in plan[m]]
        ds = rtstruct.build_structure_set(
            reference, structures, self.cfg.rtstruct, input_series_uids=list(dict.fromkeys(used))
        )
        out = self.cfg.paths.output / job.study_uid / f"{ds.SOPInstanceUID}.dcm"
        rtstruct.write_dataset(ds, out)
        spacing = reference.image.GetSpacing()
        rois = [
            {
                "name": st.roi.name,
                "model": st.provenance.model_name,
                "model_version": st.provenance.model_version,
                "volume_cc": round(imaging.volume_cc(st.mask, spacing), 2),
            }
            for st in structures
        ]
        self.store.update_job(
            job_id,
            stage="rtstruct",
            rtstruct_uid=str(ds.SOPInstanceUID),
            rtstruct_path=str(out),
            results={
                **job.results,
                "rois": rois,
                "models": outcomes,
                "reference_series": reference.series_instance_uid,
                "merge_s": round(time.perf_counter() - t0, 3),
                "partial": partial,
            },
        )
        ids = self.store.create_deliveries(job_id, rule.destinations)
        self.store.update_job(job_id, state=JobState.DELIVERING, reason=partial)
        log.info(
            "job %d study %s: RTSTRUCT %s built (%d ROIs from %s), delivering to %d destination(s)",
            job_id,
            job.study_uid,
            ds.SOPInstanceUID,
            len(structures),
            ", ".join(label_maps),
            len(ids),
        )
        for delivery_id in ids:
            self.dispatch.deliver(delivery_id)

    @staticmethod
    def _inputs(model: ModelSpec, volumes: Sequence[Any]) -> tuple[Any, list[np.ndarray]]:
        """The primary volume and every channel as float32 (z, y, x) on the primary grid: the
        other channels resampled in physical space (linear), outside their volume 0. (Assembly
        has checked that all channels share the primary's frame of reference.)"""
        import SimpleITK as sitk

        from gateway import imaging

        primary = volumes[model.primary_index]
        arrays = []
        for vol in volumes:
            image = vol.image if vol is primary else imaging.resample_to(vol.image, primary.image)
            arrays.append(sitk.GetArrayFromImage(image).astype(np.float32, copy=False))
        return primary, arrays

    @staticmethod
    def _onto(label_map: np.ndarray, primary: Any, reference: Any, model: str) -> np.ndarray:
        """A model's label map on the reference series (nearest neighbour when the model ran on
        another series of the same frame of reference)."""
        if primary is reference or primary.series_instance_uid == reference.series_instance_uid:
            return label_map
        import SimpleITK as sitk

        from gateway import imaging

        if primary.frame_of_reference_uid != reference.frame_of_reference_uid:
            raise InvalidInput(
                f"model {model} ran on a series in another frame of reference than the "
                "structure set's reference series"
            )
        image = Grid.of(primary.image).to_image(label_map)
        moved = imaging.resample_to(image, reference.image, interpolator="nearest")
        return sitk.GetArrayFromImage(moved)

    # -- send ------------------------------------------------------------------------------------

    def deliver(self, delivery_id: int) -> None:
        """Send one RTSTRUCT to one destination. Deliveries to a destination go in order of
        creation: one waits while an older one to the same destination is unfinished, and
        each finished delivery (sent or parked) hands on to the next."""
        from gateway.dicom import scu

        ahead = self.store.older_unfinished_delivery(delivery_id)
        if ahead is not None:
            log.debug("delivery %d waits behind delivery %d", delivery_id, ahead)
            return  # the older one dispatches this one when it is finished
        if not self.store.claim_delivery(delivery_id, self.clock()):
            return  # already sent, parked, being sent, or not due yet
        d = self.store.delivery(delivery_id)
        assert d is not None
        job = self.store.job(d.job_id)
        assert job is not None and job.rtstruct_path
        dest = self.cfg.destinations.get(d.destination)
        attempt = d.attempts + 1
        if dest is None:
            self.store.update_delivery(
                delivery_id,
                state=DeliveryState.FAILED,
                attempts=attempt,
                last_status=f"destination '{d.destination}' not configured",
            )
            self._finished(d.id, "rejected")
            return
        try:
            try:
                scu.store(
                    dest,
                    self.cfg.ae_title,
                    [Path(job.rtstruct_path)],
                    timeout=self.cfg.delivery.timeout_s,
                    before_send=lambda: self.crash.hit("deliver.before_send"),
                )
                self.crash.hit("deliver.after_accept")
            except (GatewayError, OSError):
                raise
            except Exception as exc:  # an unexpected network-library failure: try again later
                log.exception("job %d: delivery to %s: unexpected error", d.job_id, d.destination)
                raise PeerUnavailable(f"unexpected {type(exc).__name__}") from exc
        except RetriableError as exc:
            if attempt >= self.cfg.delivery.max_attempts:
                self.store.update_delivery(
                    delivery_id,
                    state=DeliveryState.FAILED,
                    attempts=attempt,
                    last_status=f"parked after {attempt} attempts: {exc}",
                )
                log.warning("job %d: delivery to %s parked: %s", d.job_id, d.destination, exc)
                self._finished(d.id, "parked")
                return
            delay = backoff_delay(
                attempt, self.cfg.delivery.backoff_base_s, self.cfg.delivery.backoff_max_s
            )
            self.store.update_delivery(
                delivery_id,
                state=DeliveryState.PENDING,
                attempts=attempt,
                last_status=str(exc),
                next_attempt_at=self.clock() + delay,
            )
            log.info(
                "job %d: delivery to %s attempt %d failed (%s); retry in %.1f s",
                d.job_id,
                d.destination,
                attempt,
                exc,
                delay,
            )
            self.dispatch.deliver(delivery_id, delay=delay)
            return
        except (PermanentError, OSError) as exc:
            self.store.update_delivery(
                delivery_id, state=DeliveryState.FAILED, attempts=attempt, last_status=str(exc)
            )
            log.warning("job %d: delivery to %s rejected: %s", d.job_id, d.destination, exc)
            self._finished(d.id, "rejected")
            return
        self.store.update_delivery(
            delivery_id,
            state=DeliveryState.DELIVERED,
            attempts=attempt,
            last_status="0x0000",
            delivered_at=self.clock(),
        )
        log.info("job %d: RTSTRUCT delivered to %s", d.job_id, d.destination)
        self._finished(d.id, "delivered")

    def _finished(self, delivery_id: int, outcome: str) -> None:
        """A delivery is done (delivered, parked or rejected): audit it, settle its job and hand
        on to the next delivery waiting for the same destination."""
        d = self.store.delivery(delivery_id)
        assert d is not None
        job = self.store.job(d.job_id)
        self.store.audit(
            "delivery",
            outcome,
            job_id=d.job_id,
            study_uid=job.study_uid if job else "",
            destination=d.destination,
            instances=1,
            detail=f"RTSTRUCT {job.rtstruct_uid if job else '?'} after {d.attempts} attempt(s): "
            f"{d.last_status}",
        )
        self._settle_job(d.job_id)
        following = self.store.next_pending_delivery(d.destination)
        if following is not None:
            self.dispatch.deliver(
                following.id, delay=max(0.0, following.next_attempt_at - self.clock())
            )

    def _settle_job(self, job_id: int) -> None:
        deliveries = self.store.deliveries_for(job_id)
        states = {d.state for d in deliveries}
        if states & {DeliveryState.PENDING.value, DeliveryState.SENDING.value}:
            return
        if states == {DeliveryState.DELIVERED.value}:
            job = self.store.job(job_id)
            partial = str(job.results.get("partial", "")) if job is not None else ""
            self.store.update_job(job_id, state=JobState.DONE, reason=partial, stage="delivered")
            self._audit_job(job_id, "done", partial)
        else:
            failed = [
                f"{d.destination}: {d.last_status}"
                for d in deliveries
                if d.state == DeliveryState.FAILED.value
            ]
            reason = "delivery failed: " + "; ".join(failed)
            self.store.update_job(job_id, state=JobState.FAILED, reason=reason, stage="failed")
            self._audit_job(job_id, "failed", reason)

    # -- operations ------------------------------------------------------------------------------

    def resend(self, job_id: int) -> str:
        """Retry a failed job: its parked deliveries, or the whole job if it made no RTSTRUCT."""
        job = self.store.job(job_id)
        if job is None:
            raise KeyError(job_id)
        if job.rtstruct_path and Path(job.rtstruct_path).is_file():
            ids = [
                d.id
                for d in self.store.deliveries_for(job_id)
                if d.state != DeliveryState.DELIVERED.value
            ]
            if not ids:
                ids = [d.id for d in self.store.deliveries_for(job_id)]
            for i in ids:
                self.store.update_delivery(
                    i, state=DeliveryState.PENDING, attempts=0, next_attempt_at=0.0
                )
            self.store.update_job(job_id, state=JobState.DELIVERING, reason="resend requested")
            for i in ids:
                self.dispatch.deliver(i)
            return f"job {job_id}: {len(ids)} delivery(ies) queued again"
        if not job.input_series:
            raise PermanentError(f"job {job_id} never had complete inputs; send the study again")
        self.store.update_job(job_id, state=JobState.QUEUED, reason="resend requested")
        self.dispatch.run_job(job_id)
        return f"job {job_id}: queued to run again"

    def recover(self) -> None:
        """Re-dispatch unfinished work after a (re)start; the database is the truth."""
        now = self.clock()
        for job in self.store.list_jobs(limit=100000):
            if job.state == JobState.RUNNING.value:
                self.store.update_job(job.id, state=JobState.QUEUED, reason="restarted")
                job.state = JobState.QUEUED.value
            if job.state == JobState.QUEUED.value:
                self.dispatch.run_job(job.id)
            elif job.state == JobState.DELIVERING.value:
                for d in self.store.deliveries_for(job.id):
                    if d.state == DeliveryState.SENDING.value:
                        self.store.update_delivery(d.id, state=DeliveryState.PENDING)
                    if d.state in (DeliveryState.PENDING.value, DeliveryState.SENDING.value):
                        self.dispatch.deliver(d.id, delay=max(0.0, d.next_attempt_at - now))
                self._settle_job(job.id)
        # A study whose association was open when the process stopped may be incomplete:
        # assembly gives its sender assembly.interrupted_wait_s to send it again.
        cut = self.store.mark_unfinished_receptions(now)
        if cut:
            log.warning(
                "%d study(ies) were being received when the gateway stopped: waiting up to "
                "%g s for their senders to resume",
                len(cut),
                self.cfg.assembly.interrupted_wait_s,
            )
        for study_uid in self.store.studies_with_open_work():
            self.dispatch.check_study(study_uid, delay=self.cfg.assembly.series_quiet_s)


def describe(store: Store, jobs: Sequence[JobRow]) -> list[dict[str, Any]]:
    """Jobs as plain dicts for the CLI (state, reason, per-stage timings, deliveries)."""
    out = []
    for job in jobs:
        study = store.study_times(job.study_uid)
        out.append(
            {
                "job": job.id,
                "study_uid": job.study_uid,
                "rule": job.rule,
                "model": job.model,
                "state": job.state,
                "reason": job.reason,
                "rtstruct_uid": job.rtstruct_uid,
                "timings_s": stage_timings(job, study),
                "models": dict(job.results.get("models") or {}),
                "series": dict(job.results.get("plan") or {}),
                "rois": list(job.results.get("rois") or []),
                "deliveries": [
                    {
                        "destination": d.destination,
                        "state": d.state,
                        "attempts": d.attempts,
                        "last_status": d.last_status,
                    }
                    for d in store.deliveries_for(job.id)
                ],
            }
        )
    return out
