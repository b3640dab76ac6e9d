"""Which alert conditions hold now: a pure function of the facts read from the database and
the disk (:class:`Facts`) and the configured thresholds. Each active :class:`Condition` has a
stable key naming its subject (``destination_down:planning``, ``job_failed:42``, ...); the
alert lifecycle (:mod:`gateway.monitor.alerts`) opens, re-sends and resolves alerts by it.

Messages carry UIDs, job ids, destination and model names and the recorded reasons, never
patient names, IDs or birth dates (the facts hold none)."""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass, field

from gateway.ops_policy import AlertConditions


class Kind(str, enum.Enum):
    DESTINATION_DOWN = "destination_down"
    JOB_FAILED = "job_failed"
    DELIVERY_PARKED = "delivery_parked"
    DISK_GUARD = "disk_guard"
    QUEUE_BACKLOG = "queue_backlog"
    MODEL_LOAD_FAILED = "model_load_failed"
    DRIFT = "drift"  # raised by gateway.qa.alarms; the row is the condition
    INCIDENT_CANDIDATE = "incident_candidate"


class Severity(str, enum.Enum):
    WARNING = "warning"
    CRITICAL = "critical"


def enabled_kinds(cfg: AlertConditions) -> set[Kind]:
    """The kinds switched on in config (``null`` or ``false`` switches one off)."""
    on = {
        Kind.DESTINATION_DOWN: cfg.destination_down_minutes is not None,
        Kind.JOB_FAILED: cfg.job_failed,
        Kind.DELIVERY_PARKED: cfg.delivery_parked,
        Kind.DISK_GUARD: cfg.disk_guard,
        Kind.QUEUE_BACKLOG: cfg.queue_backlog is not None,
        Kind.MODEL_LOAD_FAILED: cfg.model_load_failed,
        Kind.DRIFT: cfg.qa_drift,
        Kind.INCIDENT_CANDIDATE: cfg.incident_candidate,
    }
    return {k for k, v in on.items() if v}


@dataclass(frozen=True)
class DestinationFact:
    name: str
    down_since: float | None  # first failed C-ECHO of the current outage; None: up or unknown
    last_error: str = ""
    paused: bool = False


@dataclass(frozen=True)
class JobFact:
    id: int
    study_uid: str
    rule: str
    reason: str


@dataclass(frozen=True)
class DeliveryFact:
    id: int
    job_id: int
    destination: str
    study_uid: str
    attempts: int
    last_status: str


@dataclass(frozen=True)
class DriftFact:
    """An open drift alarm row (``gateway.qa.alarms``)."""

    key: str
    message: str
    severity: str
    model: str
    model_version: str
    roi: str
    at: float


@dataclass(frozen=True)
class IncidentFact:
    id: int
    title: str
    job_id: int | None
    study_uid: str
    model: str
    model_version: str
    roi: str
    opened_at: float


@dataclass(frozen=True)
class Facts:
    now: float
    destinations: tuple[DestinationFact, ...] = ()
    failed_jobs: tuple[JobFact, ...] = ()
    parked_deliveries: tuple[DeliveryFact, ...] = ()
    free_mb: float | None = None  # free under the spool; None: not measured
    min_free_mb: float = 0.0
    queued_jobs: int = 0
    failed_models: dict[str, str] = field(default_factory=dict)  # model name -> why
    drift: tuple[DriftFact, ...] = ()
    incident_candidates: tuple[IncidentFact, ...] = ()


@dataclass(frozen=True)
class Condition:
    """One active condition. ``key``: its subject, stable while it lasts; ``summary``: one
    line; ``detail``: the reason in words; ``since``: when it started, if known."""

    key: str
    kind: Kind
    severity: Severity
    summary: str
    detail: str = ""
    since: float | None = None
    job_id: int | None = None
    destination: str = ""
    model: str = ""
    model_version: str = ""
    roi: str = ""

    @property
    def message(self) -> str:
        return f"{self.summary}\n{self.detail}" if self.detail else self.summary


def evaluate(facts: Facts, cfg: AlertConditions) -> list[Condition]:
    """The conditions that hold, in a stable order."""
    on = enabled_kinds(cfg)
    out: list[Condition] = []
    if Kind.DESTINATION_DOWN in on and cfg.destination_down_minutes is not None:
        limit_s = cfg.destination_down_minutes * 60.0
        for d in sorted(facts.destinations, key=lambda d: d.name):
            # A paused destination is an operator's decision, not an outage to page about.
            if d.paused or d.down_since is None or facts.now - d.down_since < limit_s:
                continue
            out.append(
                Condition(
                    key=f"{Kind.DESTINATION_DOWN.value}:{d.name}",
                    kind=Kind.DESTINATION_DOWN,
                    severity=Severity.CRITICAL,
                    summary=f"destination {d.name} down",
                    detail=f"destination {d.name} has not answered C-ECHO since "
                    f"{iso(d.down_since)}" + (f": {d.last_error}" if d.last_error else ""),
                    since=d.down_since,
                    destination=d.name,
                )
            )
    # A job failed by a parked delivery is told once, by the delivery's alert, which says more.
    parked_jobs = (
        {p.job_id for p in facts.parked_deliveries} if Kind.DELIVERY_PARKED in on else set()
    )
    if Kind.JOB_FAILED in on:
        for j in facts.failed_jobs:
            if j.id in parked_jobs:
                continue
            out.append(
                Condition(
                    key=f"{Kind.JOB_FAILED.value}:{j.id}",
                    kind=Kind.JOB_FAILED,
                    severity=Severity.WARNING,
                    summary=f"job {j.id} failed (rule {j.rule})",
                    detail=f"job {j.id}, study {j.study_uid}, rule {j.rule}: {j.reason or '-'}",
                    job_id=j.id,
                )
            )
    if Kind.DELIVERY_PARKED in on:
        for p in facts.parked_deliveries:
            out.append(
                Condition(
                    key=f"{Kind.DELIVERY_PARKED.value}:{p.id}",
                    kind=Kind.DELIVERY_PARKED,
                    severity=Severity.CRITICAL,
                    summary=f"delivery {p.id} of job {p.job_id} to {p.destination} parked",
                    detail=f"delivery {p.id} of job {p.job_id} (study {p.study_uid}) to "
                    f"{p.destination} parked after {p.attempts} attempt(s): "
                    f"{p.last_status or '-'}; resend it once the destination is back",
                    job_id=p.job_id,
                    destination=p.destination,
                )
            )
    if Kind.DISK_GUARD in on and facts.free_mb is not None and facts.free_mb < facts.min_free_mb:
        out.append(
            Condition(
                key=f"{Kind.DISK_GUARD.value}:spool",
                kind=Kind.DISK_GUARD,
                severity=Severity.CRITICAL,
                summary="spool disk below the guard",
                detail=f"{facts.free_mb:.0f} MB free under the spool, below storage.min_free_mb "
                f"{facts.min_free_mb:.0f} MB: new instances are refused (Out of Resources)",
            )
        )
    if Kind.QUEUE_BACKLOG in on and cfg.queue_backlog is not None:
        if facts.queued_jobs > cfg.queue_backlog:
            out.append(
                Condition(
                    key=Kind.QUEUE_BACKLOG.value,
                    kind=Kind.QUEUE_BACKLOG,
                    severity=Severity.WARNING,
                    summary=f"{facts.queued_jobs} jobs waiting for a worker",
                    detail=f"{facts.queued_jobs} jobs queued, above alerts.conditions."
                    f"queue_backlog {cfg.queue_backlog}",
                )
            )
    if Kind.MODEL_LOAD_FAILED in on:
        for name, why in sorted(facts.failed_models.items()):
            out.append(
                Condition(
                    key=f"{Kind.MODEL_LOAD_FAILED.value}:{name}",
                    kind=Kind.MODEL_LOAD_FAILED,
                    severity=Severity.CRITICAL,
                    summary=f"model {name} failed to load",
                    detail=f"model {name}: {why or '-'}",
                    model=name,
                )
            )
    if Kind.DRIFT in on:
        for a in facts.drift:
            out.append(
                Condition(
                    key=a.key,
                    kind=Kind.DRIFT,
                    severity=Severity(a.severity)
                    if a.severity in Severity._value2member_map_
                    else Severity.WARNING,
                    summary=f"QA drift: {a.model} {a.model_version} {a.roi}".strip(),
                    detail=a.message,
                    since=a.at,
                    model=a.model,
                    model_version=a.model_version,
                    roi=a.roi,
                )
            )
    if Kind.INCIDENT_CANDIDATE in on:
        for i in facts.incident_candidates:
            out.append(
                Condition(
                    key=f"{Kind.INCIDENT_CANDIDATE.value}:{i.id}",
                    kind=Kind.INCIDENT_CANDIDATE,
                    severity=Severity.WARNING,
                    summary=f"incident candidate {i.id} to review",
                    detail=f"incident candidate {i.id} ({i.model} {i.model_version} {i.roi}, "
                    f"job {i.job_id if i.job_id is not None else '-'}, study "
                    f"{i.study_uid or '-'}): {i.title}; accept or dismiss it",
                    since=i.opened_at,
                    job_id=i.job_id,
                    model=i.model,
                    model_version=i.model_version,
                    roi=i.roi,
                )
            )
    return out


def iso(t: float) -> str:
    """UTC, to the second: what alert messages show."""
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
