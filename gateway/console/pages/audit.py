"""The audit trail: searchable, exported as CSV (the same columns as ``aircon audit --csv``)."""

from __future__ import annotations

import io
from datetime import datetime

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.console.web import console, day_start, page, page_number, query_string
from gateway.db.tables import AUDIT_COLUMNS, UserRow
from gateway.monitor.auditlog import write_csv

PER_PAGE = 100


def _params(request: Request) -> dict[str, str]:
    q = request.query_params
    return {k: q.get(k, "").strip()[:128] for k in ("q", "event", "since", "until")}


@page("viewer")
def audit(request: Request, user: UserRow) -> Response:
    c = console(request)
    p = _params(request)
    n = page_number(request)
    rows, total = c.store.audit_page(
        text=p["q"],
        event=p["event"],
        since=day_start(p["since"]),
        until=day_start(p["until"], end=True),
        offset=(n - 1) * PER_PAGE,
        limit=PER_PAGE,
    )
    kept = {k: v for k, v in p.items() if v}
    return c.render(
        request,
        "audit.html.j2",
        title="Audit",
        active="/audit",
        user=user,
        rows=rows,
        total=total,
        page=n,
        per_page=PER_PAGE,
        f=p,
        events=c.store.audit_events(),
        params=lambda **kw: query_string(kept, **kw),
        csv_link="/audit.csv" + query_string(kept),
    )


EXPORT_MAX = 100_000


@page("viewer")
def audit_csv(request: Request, user: UserRow) -> Response:
    """The rows found, oldest first, as ``aircon audit --csv`` writes them; at most
    :data:`EXPORT_MAX` (the newest): narrow the dates for more."""
    c = console(request)
    p = _params(request)
    rows, total = c.store.audit_page(
        text=p["q"],
        event=p["event"],
        since=day_start(p["since"]),
        until=day_start(p["until"], end=True),
        limit=EXPORT_MAX,
    )
    out = io.StringIO()
    write_csv(({col: getattr(r, col) for col in AUDIT_COLUMNS} for r in reversed(rows)), out)
    cut = f" (the newest {EXPORT_MAX} of {total})" if total > len(rows) else ""
    c.store.audit("action", "audit exported", detail=f"{len(rows)} rows{cut} by {user.name}")
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Response(
        out.getvalue(),
        media_type="text/csv; charset=utf-8",
        headers={"content-disposition": f'attachment; filename="aircon-audit-{stamp}.csv"'},
    )


ROUTES = [
    Route("/audit", audit, methods=["GET"], name="audit"),
    Route("/audit.csv", audit_csv, methods=["GET"], name="audit_csv"),
]
