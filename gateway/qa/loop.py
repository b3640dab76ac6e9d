"""The QA loop's step: an approved structure set came back -> pair it -> compare per ROI -> store
-> control charts, alarms and incident candidates.

Both structure sets are read by the one independent reader
(:func:`gateway.contour.reader.rasterize_rtstruct`) onto the AI set's primary series, so the
AI contours are measured exactly as the approved ones, not from the model's label map.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from gateway.config import GatewayConfig
from gateway.contour.reader import rasterize_rtstruct
from gateway.db.database import Store
from gateway.db.records import JobState, QaRecord, QaStatus, StudyInfo
from gateway.errors import PermanentError
from gateway.imaging import Slices, read_headers
from gateway.job import Provenance
from gateway.qa import metrics
from gateway.qa.pairing import AiSet, Answer, match_rois, pair, rank
from gateway.receive.receiver import patient_key
from gateway.receive.structure_sets import frame_of_reference

log = logging.getLogger(__name__)

# What reading a malformed RTSTRUCT raises: the set is unusable, not the gateway.
UNREADABLE = (ValueError, TypeError, AttributeError, KeyError, IndexError, InvalidDicomError)


class QaLoop:
    def __init__(
        self,
        cfg: GatewayConfig,
        store: Store,
        *,
        owner: str,
        clock: Callable[[], float] = time.time,
    ):
        self.cfg = cfg
        self.store = store
        self.owner = owner
        self.clock = clock

    def compare(self, uid: str) -> None:
        """Compare one received structure set (claimed first: once, whichever process)."""
        if not self.store.claim_structure_set(
            uid, self.owner, self.clock(), self.cfg.queue.lease_s
        ):
            return
        try:
            records = self._compare(uid)
        except PermanentError as exc:
            log.warning("structure set %s not compared: %s", uid, exc)
            self.store.finish_structure_set(uid, self.clock(), reason=str(exc))
            return
        except UNREADABLE as exc:
            # From the file: never echo its values (they may hold anything, names included).
            log.warning("structure set %s could not be read: %s", uid, type(exc).__name__)
            reason = f"the structure set could not be read ({type(exc).__name__} in its ROIs)"
            self.store.finish_structure_set(uid, self.clock(), reason=reason)
            return
        except Exception as exc:
            # Not the file's fault (database, disk, memory): back to pending, tried again.
            log.error("structure set %s: comparison interrupted (%s)", uid, type(exc).__name__)
            self.store.release_structure_set(uid)
            return
        if records:
            self.evaluate({(r.model, r.model_version, r.roi) for r in records})

    def evaluate(self, keys: set[tuple[str, str, str]] | None = None) -> None:
        """Re-run the control charts of ``keys`` (all, when None: at start, so that a process
        that died between a comparison and its charts loses no alarm)."""
        from gateway.qa.alarms import evaluate

        if keys is None:
            keys = {(r.model, r.model_version, r.roi) for r in self.store.qa_records()}
        if keys:
            evaluate(self.cfg, self.store, keys)

    def _compare(self, uid: str) -> list[QaRecord]:
        rec = self.store.structure_set(uid)
        if rec is None:
            return []
        approved = dcmread(rec.path)
        study = self.store.study(rec.study_uid)
        if study is None:
            raise PermanentError(
                f"AIRCON holds no images of study {rec.study_uid}: never received here, or "
                "purged after storage.retention_days"
            )
        ai, reason = pair(Answer.of(approved, rec), self._ai_sets(study))
        if ai is None:
            log.info(
                "structure set %s of study %s pairs with nothing: %s", uid, rec.study_uid, reason
            )
            self.store.finish_structure_set(uid, self.clock(), reason=reason)
            return []
        series = next(s for s in study.series if s.key == ai.reference_key)
        if series.patient_key and patient_key(approved, self.store.patient_salt) != (
            series.patient_key
        ):
            raise PermanentError(
                "its patient (PatientID, IssuerOfPatientID) is not the patient of the AI "
                "structure set's images: not compared"
            )
        job = self.store.job(ai.job_id)
        assert job is not None and job.rtstruct_path
        reference = _reference(study, ai.reference_key)
        records = compare_sets(
            self.cfg,
            dcmread(job.rtstruct_path),
            approved,
            reference,
            {r.name: r.provenance for r in job.job_outcome.rois},
            base=QaRecord(
                job_id=ai.job_id,
                study_uid=rec.study_uid,
                model="",
                model_version="",
                roi="",
                approved_roi="",
                status=QaStatus.COMPARED,
                ai_uid=ai.rtstruct_uid,
                approved_uid=uid,
                at=self.clock(),
            ),
        )
        state = self.store.finish_structure_set(
            uid, self.clock(), job_id=ai.job_id, ai_uid=ai.rtstruct_uid, records=records, rank=rank
        )
        log.info(
            "structure set %s of study %s compared with AI set %s (job %d): %d ROI(s), %s",
            uid,
            rec.study_uid,
            ai.rtstruct_uid,
            ai.job_id,
            len(records),
            state.value,
        )
        return records

    def _ai_sets(self, study: StudyInfo) -> list[AiSet]:
        out = []
        for job in self.store.jobs_of_study(study.study_uid):
            # Only what was sent: a job whose structure set never reached a destination
            # cannot have come back approved.
            if not job.rtstruct_uid or not job.rtstruct_path or job.state != JobState.DONE.value:
                continue
            ref = job.job_outcome.reference_series
            key = job.job_outcome.reference_key or ref
            series = next((s for s in study.series if s.key == key), None)
            frame = _frame(Path(job.rtstruct_path))
            if series is None or frame is None:
                continue
            out.append(
                AiSet(
                    job.id,
                    job.rtstruct_uid,
                    study.study_uid,
                    frame,
                    ref,
                    # With a classic copy sent along, the approved set refers to the copy.
                    frozenset(series.paths)
                    | {a.uid for a in job.job_outcome.artifacts if a.kind == "image"},
                    frozenset(p.label for p in job.job_outcome.ran),
                    key,
                )
            )
        return out


def _frame(path: Path) -> str | None:
    try:
        return frame_of_reference(dcmread(path, stop_before_pixels=True))
    except (OSError, ValueError):
        return None


def _reference(study: StudyInfo, key: str) -> Slices:
    series = next(s for s in study.series if s.key == key)
    frames = {uid: f for uid in series.paths if (f := series.frames_of(uid))}
    try:
        return read_headers([Path(p) for p in series.paths.values()], frames or None)
    except OSError as exc:
        raise PermanentError(f"the AI structure set's images are no longer held: {exc}") from None


def compare_sets(
    cfg: GatewayConfig,
    ai: Dataset,
    approved: Dataset,
    reference: Slices,
    provenance: dict[str, Provenance],
    base: QaRecord,
) -> list[QaRecord]:
    """Per ROI of the AI set: compared, or deleted; per approved ROI without AI counterpart:
    added. Both read onto ``reference`` (the sorted primary series) by the same reader."""
    names = [str(r.get("ROIName", "")) for r in approved.get("StructureSetROISequence", [])]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise PermanentError(f"ROI name(s) {', '.join(map(repr, twice))[:200]} appear twice")
    ai_masks = rasterize_rtstruct(ai, reference)
    approved_masks = {n: m for n, m in rasterize_rtstruct(approved, reference).items() if m.any()}
    if not approved_masks:
        # Every AI ROI "deleted" is far likelier a set whose contours we could not place.
        raise PermanentError(
            "no contour of the approved structure set lies on the AI set's image series"
        )
    match = match_rois(list(ai_masks), list(approved_masks), cfg.roi_names)
    spacing = _spacing(reference)
    models = {p.label: p for p in provenance.values()}
    # An added ROI belongs to no model; with one model in the set it is that model's.
    fallback = next(iter(models.values())) if len(models) == 1 else Provenance("", "")
    out = []
    for name, mask in ai_masks.items():
        prov = provenance.get(name, fallback)
        row = dataclasses.replace(
            base, model=prov.model_name, model_version=prov.model_version, roi=name
        )
        other = match.pairs.get(name)
        if other is None:
            volume = float(np.count_nonzero(mask)) * float(np.prod(spacing)) / 1000.0
            out.append(dataclasses.replace(row, status=QaStatus.DELETED, volume_ai=volume))
            continue
        m = metrics.compare(
            mask,
            approved_masks[other],
            spacing,
            tolerance_mm=cfg.qa.tolerance_for(name),
            apl_tolerance_mm=cfg.qa.apl_tolerance_mm,
        )
        kept = {f.name for f in dataclasses.fields(QaRecord)}
        values = {f.name: getattr(m, f.name) for f in dataclasses.fields(m) if f.name in kept}
        out.append(dataclasses.replace(row, approved_roi=other[:64], **values))
    for name in match.added:
        out.append(
            dataclasses.replace(
                base,
                model=fallback.model_name,
                model_version=fallback.model_version,
                approved_roi=name[:64],
                status=QaStatus.ADDED,
            )
        )
    return out


def _spacing(reference: Slices) -> tuple[float, float, float]:
    """(z, y, x) in mm: slice spacing, then PixelSpacing (row spacing, column spacing)."""
    first = reference.datasets[0]
    rows, columns = (float(v) for v in first.PixelSpacing)
    thickness = float(first.get("SliceThickness", 0) or 0)
    return (reference.spacing or thickness or 1.0, rows, columns)
