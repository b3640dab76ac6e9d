"""Studies and jobs: filtered lists, the reason for every study or job that is not done, the
job page (inputs, models with provenance, ROIs, preview, deliveries with every attempt) and
the operator's resend and cancel."""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from gateway.console.web import (
    action,
    audit_action,
    back,
    console,
    day_start,
    page,
    page_number,
    query_string,
    stage_bar,
)
from gateway.db.console import JobFilter
from gateway.db.records import JobState
from gateway.db.tables import UserRow
from gateway.receive.receiver import search_key

PER_PAGE = 50
KEY_LENGTH = 64


def _patient_key(request: Request) -> str:
    key = request.query_params.get("key", "")
    return key if len(key) == KEY_LENGTH and all(ch in "0123456789abcdef" for ch in key) else ""


@page("viewer")
def studies(request: Request, user: UserRow) -> Response:
    c = console(request)
    key = _patient_key(request)
    uids = c.store.studies_for_patient_key(key) if key else None
    params = {k: v for k, v in request.query_params.items() if k in ("key", "attention")}
    n = page_number(request)
    rows, total = c.store.study_page(
        reason_only=bool(params.get("attention")),
        study_uids=uids,
        offset=(n - 1) * PER_PAGE,
        limit=PER_PAGE,
    )
    refused, _ = c.store.audit_page(event="received", outcome="refused", limit=20)
    return c.render(
        request,
        "studies.html.j2",
        title="Studies",
        active="/studies",
        user=user,
        refresh=True,
        rows=rows,
        total=total,
        page=n,
        per_page=PER_PAGE,
        params=lambda **kw: query_string(params, **kw),
        searched=bool(key),
        refused=refused,
    )


@action("viewer")
def search(request: Request, user: UserRow, form: dict[str, str]) -> Response:
    """Exact-match patient search: the typed PatientID (and issuer) is hashed with this
    installation's salt and only the hash goes on; the clear value is never kept or logged."""
    c = console(request)
    key = search_key(form.get("patient_id", ""), form.get("issuer", ""), c.store.patient_salt)
    if not key:
        return back(request, "Type a patient ID to search for.", "/studies", error=True)
    audit_action(c, request, user, "patient search", detail="exact-match search (value not kept)")
    return RedirectResponse(f"/studies?key={key}", status_code=303)


def _filter(request: Request) -> tuple[JobFilter, dict[str, str]]:
    q = request.query_params
    params = {
        k: q.get(k, "").strip()[:64] for k in ("state", "rule", "model", "since", "until", "study")
    }
    study = params["study"]
    f = JobFilter(
        state=params["state"],
        rule=params["rule"],
        model=params["model"],
        since=day_start(params["since"]),
        until=day_start(params["until"], end=True),
        study_uids=[study] if study else None,
    )
    return f, {k: v for k, v in params.items() if v}


@page("viewer")
def jobs(request: Request, user: UserRow) -> Response:
    c = console(request)
    f, params = _filter(request)
    n = page_number(request)
    rows, total = c.store.job_page(f, offset=(n - 1) * PER_PAGE, limit=PER_PAGE)
    items = []
    for job in rows:
        t, scale = stage_bar(job)
        items.append({"job": job, "t": t, "scale": scale})
    return c.render(
        request,
        "jobs.html.j2",
        title="Jobs",
        active="/jobs",
        user=user,
        refresh=True,
        items=items,
        total=total,
        page=n,
        per_page=PER_PAGE,
        params=lambda **kw: query_string(params, **kw),
        f=params,
        states=[s.value for s in JobState],
        rules=sorted({r.name for r in c.cfg.rules} | set(c.store.job_rules())),
        models=sorted(c.cfg.models),
    )


@page("viewer")
def job(request: Request, user: UserRow) -> Response:
    c = console(request)
    job_id = int(request.path_params["job_id"])
    row = c.store.job(job_id)
    if row is None:
        return c.render(
            request, "missing.html.j2", 404, title="Not found", user=user, what=f"job {job_id}"
        )
    outcome = row.job_outcome
    plan = row.job_plan
    series = c.store.series_descriptions(plan.series_used or list(row.input_series or []))
    t, scale = stage_bar(row)
    return c.render(
        request,
        "job.html.j2",
        title=f"Job {job_id}",
        active="/jobs",
        user=user,
        refresh=row.state not in ("done", "failed", "cancelled"),
        job=row,
        plan=plan,
        outcome=outcome,
        series=series,
        t=t,
        scale=scale,
        deliveries=c.store.deliveries_for(job_id),
        history=c.store.job_audit(job_id),
        specs=c.cfg.models,
        has_preview=_preview(c.cfg.paths.output, row.preview_path) is not None,
    )


def _preview(root: Path, stored: str | None) -> Path | None:
    """The job's preview file, only when it lies under the output folder."""
    if not stored:
        return None
    path = Path(stored).resolve()
    try:
        path.relative_to(root.resolve())
    except ValueError:
        return None
    return path if path.is_file() else None


@page("viewer")
def preview(request: Request, user: UserRow) -> Response:
    c = console(request)
    row = c.store.job(int(request.path_params["job_id"]))
    path = _preview(c.cfg.paths.output, row.preview_path if row else None)
    if path is None:
        return PlainTextResponse("404: no preview for this job", 404)
    return FileResponse(path, media_type="image/png")


@action("operator")
def resend(request: Request, user: UserRow, form: dict[str, str]) -> Response:
    c = console(request)
    job_id = int(request.path_params["job_id"])
    try:
        said = c.ops.resend(job_id, user.name)
    except KeyError:
        return back(request, f"No job {job_id}.", error=True)
    except Exception as exc:  # a clear refusal (e.g. nothing to resend) for the operator
        return back(request, f"Job {job_id} not resent: {exc}", error=True)
    audit_action(c, request, user, "job resent", job_id=job_id, detail=said[:200])
    return back(request, said)


@action("operator")
def cancel(request: Request, user: UserRow, form: dict[str, str]) -> Response:
    c = console(request)
    job_id = int(request.path_params["job_id"])
    try:
        said = c.ops.cancel(job_id, user.name)
    except KeyError:
        return back(request, f"No job {job_id}.", error=True)
    except Exception as exc:
        return back(request, f"Job {job_id} not cancelled: {exc}", error=True)
    audit_action(c, request, user, "job cancelled", job_id=job_id, detail=said[:200])
    return back(request, said)


ROUTES = [
    Route("/studies", studies, methods=["GET"], name="studies"),
    Route("/studies/search", search, methods=["POST"], name="search"),
    Route("/jobs", jobs, methods=["GET"], name="jobs"),
    Route("/jobs/{job_id:int}", job, methods=["GET"], name="job"),
    Route("/jobs/{job_id:int}/preview.png", preview, methods=["GET"], name="preview"),
    Route("/jobs/{job_id:int}/resend", resend, methods=["POST"], name="resend"),
    Route("/jobs/{job_id:int}/cancel", cancel, methods=["POST"], name="cancel"),
]
