"""``/metrics`` (Prometheus text format), ``/healthz`` (alive) and ``/readyz`` (database
writable, SCP listening, models warm, disk above the guard; 503 with the reasons otherwise).
Open, or behind ``http.metrics_token`` (Bearer)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.console.web import console, probe
from gateway.monitor.health import liveness


@probe
def metrics(request: Request) -> Response:
    body, content_type = console(request).metrics.render()
    return Response(body, media_type=content_type)


@probe
def healthz(request: Request) -> Response:
    return JSONResponse(liveness())


@probe
def readyz(request: Request) -> Response:
    c = console(request)
    ok, body = c.readiness()
    return JSONResponse(body, status_code=200 if ok else 503)


ROUTES = [
    Route("/metrics", metrics, methods=["GET"], name="metrics"),
    Route("/healthz", healthz, methods=["GET"], name="healthz"),
    Route("/readyz", readyz, methods=["GET"], name="readyz"),
]
