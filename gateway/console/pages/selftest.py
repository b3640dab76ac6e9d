"""Self-test: the bundled phantom study through the whole chain to a chosen destination, or a
dry run that sends nothing; the recent self-tests with result, reason and timings."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.console.web import action, audit_action, back, console, page
from gateway.db.tables import UserRow

RECENT = 20


@page("viewer")
def self_tests(request: Request, user: UserRow) -> Response:
    c = console(request)
    rows = c.store.self_tests(RECENT)
    items = []
    for row in rows:
        t = dict(row.timings or {})
        stages = {k.removeprefix("stage."): v for k, v in t.items() if k.startswith("stage.")}
        items.append(
            {
                "test": row,
                "own": {k: v for k, v in t.items() if not k.startswith("stage.")},
                "stages": stages,
                "scale": max(
                    stages.get("total", 0.0), sum(v for k, v in stages.items() if k != "total")
                ),
            }
        )
    return c.render(
        request,
        "selftest.html.j2",
        title="Self-test",
        active="/self-test",
        user=user,
        refresh=any(r.state in ("sending", "running") for r in rows),
        items=items,
        destinations=sorted(c.cfg.destinations),
    )


@action("operator")
def run_self_test(request: Request, user: UserRow, form: dict[str, str]) -> Response:
    c = console(request)
    destination = form.get("destination", "")
    if destination and destination not in c.cfg.destinations:
        return back(request, f"No destination {destination[:64]!r}.", "/self-test", error=True)
    where = destination or "nothing (dry run)"
    try:
        test_id = c.ops.self_test(destination, user.name)
    except Exception as exc:  # a clear refusal (e.g. this process does not listen)
        return back(request, f"Self-test not started: {exc}", "/self-test", error=True)
    audit_action(c, request, user, "self-test", destination=destination, detail=f"to {where}")
    return back(request, f"Self-test {test_id} started: to {where}.", "/self-test")


ROUTES = [
    Route("/self-test", self_tests, methods=["GET"], name="self_tests"),
    Route("/self-test", run_self_test, methods=["POST"], name="run_self_test"),
]
