"""The console's ASGI app: routes, session cookies, security headers, templates."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.config import GatewayConfig
from gateway.console import auth, pages
from gateway.console.web import TEMPLATES, Console, Operations, csrf_token
from gateway.db.database import Store
from gateway.monitor.metrics import MetricsExporter

# Pages are self-contained: no script, no style or image from elsewhere, not framed.
SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        b"frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
    (b"cache-control", b"no-store"),
]


class SecurityHeaders:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in SECURITY_HEADERS if k not in names]
                message["headers"] = list(message.get("headers", [])) + extra
            await send(message)

        await self.app(scope, receive, with_headers)


def _when(t: float | None, fmt: str = "%Y-%m-%d %H:%M:%S") -> str:
    return datetime.fromtimestamp(t).strftime(fmt) if t else ""


def _ago(t: float | None) -> str:
    if not t:
        return "never"
    s = max(0.0, time.time() - t)
    if s < 90:
        return f"{s:.0f} s ago"
    if s < 5400:
        return f"{s / 60:.0f} min ago"
    if s < 36 * 3600:
        return f"{s / 3600:.1f} h ago"
    return f"{s / 86400:.1f} days ago"


def _templates(cfg: GatewayConfig) -> Jinja2Templates:
    templates = Jinja2Templates(directory=str(TEMPLATES))
    env = templates.env
    env.autoescape = True
    env.globals.update(csrf_token=csrf_token, ae_title=cfg.ae_title, refresh_s=cfg.http.refresh_s)
    env.filters.update(when=_when, ago=_ago)
    return templates


def routes() -> list[BaseRoute]:
    static = StaticFiles(directory=str(TEMPLATES.parent / "static"))
    return [
        *auth.ROUTES,
        *pages.ROUTES,
        Mount("/static", app=static, name="static"),
    ]


def create_app(cfg: GatewayConfig, store: Store, ops: Operations) -> Starlette:
    """The console for one gateway process. The cookie-signing key is made once per
    installation and kept in the database (sessions survive a restart)."""
    secure = cfg.http.tls is not None
    app = Starlette(
        routes=routes(),
        middleware=[
            Middleware(SecurityHeaders),
            Middleware(
                SessionMiddleware,
                secret_key=store.installation_secret("console_session_key"),
                session_cookie="aircon_session",
                max_age=int(cfg.http.auth.session_hours * 3600),
                same_site="strict",
                https_only=secure,
            ),
        ],
    )
    app.state.console = Console(
        cfg=cfg,
        store=store,
        ops=ops,
        templates=_templates(cfg),
        metrics=MetricsExporter(cfg, store, ops),
    )
    return app


def all_routes(app: Starlette) -> list[tuple[str, set[str], Any]]:
    """(path, methods, endpoint) of every route, for the access tests."""
    out = []
    for r in app.routes:
        if isinstance(r, Route):
            out.append((r.path, set(r.methods or ()), r.endpoint))
        elif isinstance(r, Mount):
            out.append((r.path, {"GET"}, r.app))
    return out
