"""The console's pages, one module per menu entry; each lists its routes in ``ROUTES``."""

from __future__ import annotations

from starlette.routing import BaseRoute

from gateway.console.pages import (
    audit,
    destinations,
    jobs,
    models,
    overview,
    peers,
    probes,
    qa,
    selftest,
    users,
)

ROUTES: list[BaseRoute] = [
    *overview.ROUTES,
    *jobs.ROUTES,
    *destinations.ROUTES,
    *peers.ROUTES,
    *models.ROUTES,
    *qa.ROUTES,
    *audit.ROUTES,
    *users.ROUTES,
    *selftest.ROUTES,
    *probes.ROUTES,
]
