"""The console's pages, one module per menu entry; each lists its routes in ``ROUTES``."""

from __future__ import annotations

from starlette.routing import BaseRoute

from gateway.console.pages import audit, destinations, jobs, overview, probes, selftest, users

ROUTES: list[BaseRoute] = [
    *overview.ROUTES,
    *jobs.ROUTES,
    *destinations.ROUTES,
    *audit.ROUTES,
    *users.ROUTES,
    *selftest.ROUTES,
    *probes.ROUTES,
]
