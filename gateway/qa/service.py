"""What ``aircon qa`` / ``aircon incident`` and the console's QA page both do with the Store:
evaluate the control charts, move incidents through the register, write the monitoring report.
One implementation, so the CLI and the console write the same rows and the same audit."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gateway.config import GatewayConfig
from gateway.db.database import Store
from gateway.db.records import QaRecord
from gateway.qa import drift, report
from gateway.qa.alarms import baseline_for

SEVERITIES = ("low", "medium", "high")
# The command (CLI) or button (console) -> the state it moves an incident to.
MOVES = {"accept": "open", "dismiss": "dismissed", "close": "closed"}


def drift_all(
    cfg: GatewayConfig, records: Sequence[QaRecord], until: float | None = None
) -> list[drift.RoiDrift]:
    """The control charts of every model version and ROI (model.yaml baselines of the loaded
    versions), over the rows compared before ``until``."""

    def baseline(key: drift.RoiKey) -> Any:
        return baseline_for(cfg, key.model, key.model_version, key.roi)

    rows = records if until is None else [r for r in records if r.at < until]
    return drift.evaluate_all(rows, cfg.qa, baseline)


def open_incident(
    store: Store,
    now: float,
    by: str,
    *,
    severity: str,
    description: str,
    title: str = "",
    job_id: int | None = None,
    study_uid: str = "",
    model: str = "",
    model_version: str = "",
    roi: str = "",
) -> int:
    """Register an incident (state open). With a job, the study and (unless given) the models
    and versions that ran come from it. Raises KeyError for an unknown job, ValueError for an
    unknown severity."""
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {', '.join(SEVERITIES)}")
    job = store.job(job_id) if job_id is not None else None
    if job_id is not None and job is None:
        raise KeyError(job_id)
    version = ""
    if job is not None and not model:
        ran = job.job_outcome.ran
        model = ", ".join(p.model_name for p in ran)
        version = ", ".join(p.model_version for p in ran)
    new = store.add_incident(
        now,
        severity=severity,
        title=title or description[:80],
        description=description,
        job_id=job_id,
        study_uid=job.study_uid if job is not None else study_uid,
        model=model,
        model_version=model_version or version,
        roi=roi,
        opened_by=by,
    )
    assert new is not None  # no key: never a duplicate
    return new


def move_incident(
    store: Store,
    incident_id: int,
    now: float,
    by: str,
    move: str,
    *,
    severity: str = "",
    reason: str = "",
    actions: str = "",
) -> str:
    """``accept`` (a candidate becomes open, optionally with a severity), ``dismiss`` (with
    a reason) or ``close`` (with what was done). Returns the new state; raises KeyError (no
    such incident) or ValueError (a move its state does not allow)."""
    to = MOVES[move]
    fields = {"actions": actions}
    if move == "accept" and severity:
        fields["severity"] = severity
    if move == "dismiss":
        fields["actions"] = f"dismissed: {reason}"
    store.update_incident(incident_id, now, by, to, **fields)
    return to


def monitoring_report(
    cfg: GatewayConfig, store: Store, since: float, out_dir: Path, until: float | None = None
) -> report.ReportFiles:
    """The monitoring report of ``[since, until)``: the period's cases, the control charts
    over all cases before ``until``, and the period's alarms and incidents."""
    from gateway.contour.rtstruct import gateway_version

    until = time.time() if until is None else until
    everything = store.qa_records()
    events = [
        (a.at, f"{a.kind} alarm ({a.state})", a.message)
        for a in store.alerts()
        if since <= a.at < until
    ] + [
        (i.opened_at, f"incident {i.id} ({i.state})", i.title)
        for i in store.incidents()
        if since <= i.opened_at < until
    ]
    return report.monitoring_report(
        [r for r in everything if r.at >= since],
        since,
        until,
        out_dir,
        acceptance={name: spec.qa for name, spec in cfg.models.items()},
        software_version=gateway_version(),
        drift=drift_all(cfg, everything, until),
        events=events,
    )
