"""Models: each configured model and version with its weights hash, inputs and ROIs, whether the
running gateway has it loaded and warm, studies contoured and time per study, the rules using
it."""

from __future__ import annotations

from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.console.web import console, page
from gateway.db.tables import UserRow

RECENT = 200  # run times over a model's last this many studies


def _times(seconds: list[float]) -> dict[str, Any]:
    if not seconds:
        return {"n": 0, "median": None, "p90": None}
    median, p90 = (float(v) for v in np.percentile(seconds, [50, 90]))
    return {"n": len(seconds), "median": median, "p90": p90}


@page("viewer")
def models(request: Request, user: UserRow) -> Response:
    c = console(request)
    components = c.store.components()
    usage = c.store.model_usage(sorted(c.cfg.models), recent=RECENT)
    items = []
    for name, spec in sorted(c.cfg.models.items()):
        found = components.get(f"model:{name}")
        used = usage.get(name, {})
        items.append(
            {
                "spec": spec,
                "state": found.state if found else "unknown",
                "detail": found.detail if found else "",
                "updated_at": found.updated_at if found else None,
                "studies": used.get("studies", 0),
                "failed": used.get("failed", 0),
                "times": _times(used.get("segment_s", [])),
                "rules": [r.name for r in c.cfg.rules if name in r.models],
            }
        )
    return c.render(
        request,
        "models.html.j2",
        title="Models",
        active="/models",
        user=user,
        items=items,
        recent=RECENT,
    )


ROUTES = [Route("/models", models, methods=["GET"], name="models")]
