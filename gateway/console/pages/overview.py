"""Overview: is every part healthy, what happened in the last 24 h, which alerts are open."""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.console.web import action, audit_action, back, console, page
from gateway.db.tables import UserRow

DAY_S = 24 * 3600.0


@page("viewer")
def overview(request: Request, user: UserRow) -> Response:
    c = console(request)
    now = time.time()
    ready, body = c.readiness()
    components = c.store.components()
    models = {
        name: components.get(f"model:{name}")
        for name in sorted({m for rule in c.cfg.rules for m in rule.models})
    }
    activity = c.store.activity(now - DAY_S)
    done = activity["jobs"].get("done", 0)
    return c.render(
        request,
        "overview.html.j2",
        title="Overview",
        active="/",
        user=user,
        refresh=True,
        ready=ready,
        checks=body["checks"],
        models=models,
        activity=activity,
        per_hour={
            "instances": activity["instances"] / 24.0,
            "jobs": done / 24.0,
        },
        alerts=c.store.alerts("open", limit=100),
        candidates=c.store.incidents("candidate"),
        uptime_s=now - c.started_at,
    )


ROUTES = [Route("/", overview, methods=["GET"], name="overview")]


@action("operator")
def acknowledge(request: Request, user: UserRow, form: dict[str, str]) -> Response:
    c = console(request)
    alert_id = int(request.path_params["alert_id"])
    try:
        c.store.acknowledge_alert(alert_id, user.name, time.time())
    except KeyError:
        return back(request, f"No alert {alert_id}.", error=True)
    except ValueError as exc:
        return back(request, f"{exc}.", error=True)
    audit_action(c, request, user, "alert acknowledged", detail=f"alert {alert_id}")
    return back(request, f"Alert {alert_id} acknowledged.")


ROUTES.append(
    Route("/alerts/{alert_id:int}/acknowledge", acknowledge, methods=["POST"], name="acknowledge")
)
