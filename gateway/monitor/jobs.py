"""What the operator sees of jobs: plain dicts for ``aircon jobs`` and the console."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gateway.db.database import Store
from gateway.db.tables import JobRow
from gateway.db.work import timings


def describe(store: Store, jobs: Sequence[JobRow]) -> list[dict[str, Any]]:
    """Jobs as plain dicts: state, reason, per-stage timings, models with provenance, series
    used per model, ROIs with volumes, the contour preview PNG (None when none was made),
    deliveries."""
    out = []
    for job in jobs:
        outcome = job.job_outcome
        out.append(
            {
                "job": job.id,
                "study_uid": job.study_uid,
                "rule": job.rule,
                "models": list(job.models),
                "state": job.state,
                "reason": job.reason,
                "rtstruct_uid": job.rtstruct_uid,
                "preview_path": job.preview_path,
                "attempts": job.attempts,
                "timings_s": timings(job),
                "model_outcomes": outcome.model_dump(mode="json")["models"],
                "series": {m: list(s) for m, s in job.job_plan.runnable.items()},
                "rois": [r.model_dump(mode="json") for r in outcome.rois],
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
