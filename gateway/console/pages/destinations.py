"""Destinations: the echo monitor's view (up/down, round trip, last success, down since), the
deliveries waiting for each, "echo now", pause and resume."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.console.web import action, audit_action, back, console, page
from gateway.db.tables import UserRow
from gateway.monitor.echo import destinations_overview


@page("viewer")
def destinations(request: Request, user: UserRow) -> Response:
    c = console(request)
    return c.render(
        request,
        "destinations.html.j2",
        title="Destinations",
        active="/destinations",
        user=user,
        refresh=True,
        rows=destinations_overview(c.cfg, c.store),
        interval_s=c.cfg.monitor.echo_interval_s,
    )


def _known(request: Request) -> str | None:
    name = request.path_params["name"]
    return name if name in console(request).cfg.destinations else None


@action("operator")
def echo_now(request: Request, user: UserRow, form: dict[str, str]) -> Response:
    c = console(request)
    name = _known(request)
    if name is None:
        return back(request, "No such destination.", "/destinations", error=True)
    said = c.ops.echo(name)
    audit_action(c, request, user, "echo now", destination=name, detail=said[:200])
    return back(request, said, "/destinations")


@action("operator")
def pause(request: Request, user: UserRow, form: dict[str, str]) -> Response:
    c = console(request)
    name = _known(request)
    if name is None:
        return back(request, "No such destination.", "/destinations", error=True)
    return back(request, c.ops.pause(name, user.name), "/destinations")


@action("operator")
def resume(request: Request, user: UserRow, form: dict[str, str]) -> Response:
    c = console(request)
    name = _known(request)
    if name is None:
        return back(request, "No such destination.", "/destinations", error=True)
    return back(request, c.ops.resume(name, user.name), "/destinations")


ROUTES = [
    Route("/destinations", destinations, methods=["GET"], name="destinations"),
    Route("/destinations/{name}/echo", echo_now, methods=["POST"], name="echo_now"),
    Route("/destinations/{name}/pause", pause, methods=["POST"], name="pause"),
    Route("/destinations/{name}/resume", resume, methods=["POST"], name="resume"),
]
