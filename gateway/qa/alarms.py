"""After a comparison: re-run the control charts of the touched model versions and ROIs, and
store what they raise (alarms in ``alerts``, incident candidates in ``incidents``), once each:
the charts are re-evaluated over all rows every time, and every alarm and candidate carries a
stable key, so a repeat evaluation raises nothing new."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from gateway.config import GatewayConfig
from gateway.db.database import Store
from gateway.db.records import QaStatus
from gateway.qa import drift
from gateway.segment.spec import RoiBaseline

log = logging.getLogger(__name__)


def baseline_for(cfg: GatewayConfig, model: str, version: str, roi: str) -> RoiBaseline | None:
    """The model.yaml ``qa.baseline`` of an ROI, for the model version loaded now only."""
    spec = cfg.models.get(model)
    return spec.qa.baseline_for(roi) if spec and spec.version == version else None


def evaluate(
    cfg: GatewayConfig,
    store: Store,
    keys: Iterable[tuple[str, str, str]],
    now: float | None = None,
) -> tuple[int, int]:
    """``keys``: (model, model_version, roi) whose charts a new comparison touched. Returns
    how many alarms and incident candidates were new."""
    now = time.time() if now is None else now
    wanted = set(keys)
    groups: dict[tuple[str, str, str], list] = {}
    for r in store.qa_records():
        key = (r.model, r.model_version, r.roi)
        if key in wanted and r.status is not QaStatus.ADDED:
            groups.setdefault(key, []).append(r)
    alarms = candidates = 0
    for (model, version, roi), rows in sorted(groups.items()):
        baseline = baseline_for(cfg, model, version, roi)
        result = drift.evaluate(
            rows, cfg.qa.control, candidate_dice=cfg.qa.candidate_dice, baseline=baseline
        )
        for alarm in result.alarms:
            if store.raise_alert(
                alarm.key,
                now,
                kind="drift",
                model=model,
                model_version=version,
                roi=roi,
                message=alarm.message,
            ):
                alarms += 1
                log.warning("QA drift alarm: %s", alarm.message)
        raised = {c.key for c in result.candidates}
        for old in store.incidents(state="candidate"):
            if (old.model, old.model_version, old.roi) != (model, version, roi):
                continue
            if old.key and old.opened_by == "aircon" and old.key not in raised:
                # Raised by a version of an approved set that a later version superseded.
                store.update_incident(
                    old.id,
                    now,
                    "aircon",
                    "dismissed",
                    actions="dismissed: a later approved version no longer shows it",
                )
                log.info("QA incident candidate %d dismissed: superseded", old.id)
        for c in result.candidates:
            new = store.add_incident(
                now,
                key=c.key,
                state="candidate",
                title=c.message,
                job_id=c.job_id,
                study_uid=c.study_uid,
                model=model,
                model_version=version,
                roi=roi,
                opened_by="aircon",
            )
            if new is not None:
                candidates += 1
                log.warning("QA incident candidate %d: %s", new, c.message)
    return alarms, candidates
