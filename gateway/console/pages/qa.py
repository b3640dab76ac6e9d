"""QA: the clinical QA of each model version and ROI (statistics, drift state, control charts),
the incident candidates and the incident register (open, accept, dismiss, edit, close), the
drift alarms, and the monitoring report for download. UIDs, dates and ROI names only: the QA
tables hold no patient data."""

from __future__ import annotations

import re
import tempfile
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from gateway.console.web import action, audit_action, back, console, page
from gateway.db.records import QaRecord
from gateway.db.tables import UserRow
from gateway.qa import plots, service, summary
from gateway.qa.drift import Chart, RoiDrift

WINDOW_DAYS = 30
STATES = ("candidate", "open", "closed", "dismissed")
TEXT_MAX = 4000
DONE = {"accept": "accepted", "dismiss": "dismissed", "close": "closed"}


def _key(r: QaRecord) -> tuple[str, str, str]:
    return (r.model, r.model_version, r.roi)


def _chart_facts(chart: Chart) -> dict[str, Any]:
    """What the chart image shows, in numbers: centre, limits and EWMA at the latest case."""
    judged = [p for p in chart.points if p.ewma is not None]
    last = judged[-1] if judged else None
    return {
        "metric": chart.metric.label,
        "source": chart.baseline_source,
        "centre": chart.centre,
        "sigma": chart.sigma,
        "ewma": last.ewma if last else None,
        "lower": last.lower if last else None,
        "upper": last.upper if last else None,
        "out": chart.out,
        "points": len(chart.points),
    }


def _drift_rows(results: Sequence[RoiDrift]) -> list[dict[str, Any]]:
    return [
        {
            "model": d.key.model,
            "version": d.key.model_version,
            "roi": d.key.roi,
            "state": d.state.value.replace("_", " "),
            "since_job_id": d.since_job_id,
            "charts": [_chart_facts(ch) for ch in d.charts],
        }
        for d in results
    ]


@page("viewer")
def qa(request: Request, user: UserRow) -> Response:
    c = console(request)
    now = time.time()
    records = c.store.qa_records()
    stats = summary.summarize(records, now=now, window_days=WINDOW_DAYS)
    results = service.drift_all(c.cfg, records)
    states = {(d.key.model, d.key.model_version, d.key.roi): d.state.value for d in results}
    wanted = request.query_params.get("state", "")
    wanted = wanted if wanted in STATES else ""
    alerts = [a for a in c.store.alerts(limit=200) if a.kind == "drift"]
    return c.render(
        request,
        "qa.html.j2",
        title="QA",
        active="/qa",
        user=user,
        rois=[
            r | {"drift": states.get((r["model"], r["model_version"], r["roi"]), "")}
            for r in stats["rois"]
        ],
        added=stats["added"],
        window=summary.window_name(WINDOW_DAYS),
        charts=_drift_rows(results),
        candidates=c.store.incidents(state="candidate"),
        incidents=c.store.incidents(state=wanted or None),
        state=wanted,
        states=STATES,
        severities=service.SEVERITIES,
        alerts=alerts,
        can_act=user.role in ("operator", "admin"),
    )


@page("viewer")
def chart(request: Request, user: UserRow) -> Response:
    """The control charts (surface Dice, APL) of one model version and ROI, drawn now."""
    q = request.query_params
    key = (q.get("model", ""), q.get("version", ""), q.get("roi", ""))
    c = console(request)
    rows = [r for r in c.store.qa_records() if _key(r) == key]
    results = service.drift_all(c.cfg, rows) if all(key) else []
    if not results:
        return PlainTextResponse("404: no QA cases for this model version and ROI", 404)
    d = results[0]
    png = plots.control_chart(f"{d.key.model} {d.key.model_version} {d.key.roi}", d.charts)
    return Response(png, media_type="image/png")


def _since(text: str, now: float) -> float | None:
    """``30d`` (days before now) or ``YYYY-MM-DD`` (local midnight); None when neither."""
    text = text.strip()
    if m := re.fullmatch(r"(\d{1,4})d", text):
        return now - int(m[1]) * 86400.0
    try:
        return datetime.strptime(text, "%Y-%m-%d").timestamp()
    except ValueError:
        return None


@page("viewer")
def report(request: Request, user: UserRow) -> Response:
    """The monitoring report of a period (as ``aircon qa report --since``), one HTML file."""
    c = console(request)
    now = time.time()
    since = _since(request.query_params.get("since", "30d"), now)
    if since is None or since >= now:
        return PlainTextResponse("400: since must be like 30d or 2026-11-01", 400)
    with tempfile.TemporaryDirectory(prefix="aircon-report-") as tmp:
        files = service.monitoring_report(c.cfg, c.store, since, Path(tmp), until=now)
        html = files.html.read_bytes()
    name = f"aircon-qa-report-{datetime.fromtimestamp(now):%Y-%m-%d}.html"
    return Response(
        html,
        media_type="text/html; charset=utf-8",
        headers={"content-disposition": f'attachment; filename="{name}"'},
    )


# -- the incident register (operator) -------------------------------------------------------------


def _text(form: dict[str, str], name: str) -> str:
    return form.get(name, "").strip()[:TEXT_MAX]


@action("operator")
def incident_open(request: Request, user: UserRow, form: dict[str, str]) -> Response:
    c = console(request)
    description, job = _text(form, "description"), form.get("job_id", "").strip()
    if not description:
        return back(request, "Describe the incident.", "/qa", error=True)
    if job and not (job.isascii() and job.isdigit() and len(job) <= 18):
        return back(request, "The job id must be a number.", "/qa", error=True)
    job_id = int(job) if job else None
    try:
        new = service.open_incident(
            c.store,
            time.time(),
            user.name,
            severity=form.get("severity", ""),
            title=_text(form, "title")[:200],
            description=description,
            job_id=job_id,
        )
    except KeyError:
        return back(request, f"No job {job_id}.", "/qa", error=True)
    except ValueError as exc:
        return back(request, str(exc), "/qa", error=True)
    audit_action(c, request, user, "incident opened", job_id=job_id, detail=f"incident {new}")
    return back(request, f"Incident {new} opened.", "/qa")


def _move(request: Request, user: UserRow, move: str, **fields: str) -> Response:
    c = console(request)
    incident_id = int(request.path_params["incident_id"])
    try:
        to = service.move_incident(c.store, incident_id, time.time(), user.name, move, **fields)
    except KeyError:
        return back(request, f"No incident {incident_id}.", "/qa", error=True)
    except ValueError as exc:
        return back(request, str(exc), "/qa", error=True)
    done = DONE[move]
    audit_action(c, request, user, f"incident {done}", detail=f"incident {incident_id} -> {to}")
    return back(request, f"Incident {incident_id} {done}.", "/qa")


@action("operator")
def incident_accept(request: Request, user: UserRow, form: dict[str, str]) -> Response:
    severity = form.get("severity", "")
    if severity and severity not in service.SEVERITIES:
        return back(request, f"Unknown severity '{severity[:20]}'.", "/qa", error=True)
    return _move(request, user, "accept", severity=severity)


@action("operator")
def incident_dismiss(request: Request, user: UserRow, form: dict[str, str]) -> Response:
    reason = _text(form, "reason")
    if not reason:
        return back(request, "Say why the candidate is dismissed.", "/qa", error=True)
    return _move(request, user, "dismiss", reason=reason)


@action("operator")
def incident_close(request: Request, user: UserRow, form: dict[str, str]) -> Response:
    actions = _text(form, "actions")
    if not actions:
        return back(request, "Say what was done before closing.", "/qa", error=True)
    return _move(request, user, "close", actions=actions)


@action("operator")
def incident_edit(request: Request, user: UserRow, form: dict[str, str]) -> Response:
    c = console(request)
    incident_id = int(request.path_params["incident_id"])
    fields: dict[str, str] = {k: _text(form, k) for k in ("description", "actions") if k in form}
    severity = form.get("severity", "")
    if severity:
        if severity not in service.SEVERITIES:
            return back(request, f"Unknown severity '{severity[:20]}'.", "/qa", error=True)
        fields["severity"] = severity
    try:
        c.store.edit_incident(incident_id, time.time(), user.name, **fields)
    except KeyError:
        return back(request, f"No incident {incident_id}.", "/qa", error=True)
    audit_action(c, request, user, "incident edited", detail=f"incident {incident_id}")
    return back(request, f"Incident {incident_id} saved.", "/qa")


ROUTES = [
    Route("/qa", qa, methods=["GET"], name="qa"),
    Route("/qa/chart.png", chart, methods=["GET"], name="qa_chart"),
    Route("/qa/report.html", report, methods=["GET"], name="qa_report"),
    Route("/qa/incidents", incident_open, methods=["POST"], name="incident_open"),
    Route("/qa/incidents/{incident_id:int}/accept", incident_accept, methods=["POST"]),
    Route("/qa/incidents/{incident_id:int}/dismiss", incident_dismiss, methods=["POST"]),
    Route("/qa/incidents/{incident_id:int}/close", incident_close, methods=["POST"]),
    Route("/qa/incidents/{incident_id:int}/edit", incident_edit, methods=["POST"]),
]
