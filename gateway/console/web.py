"""The console's plumbing: the per-app state, and the decorators that guard every route.

Every endpoint is made with :func:`page` (GET, a role to read), :func:`action` (POST, a role to
act: CSRF token checked, audited) or :func:`probe` (``/metrics``, ``/healthz``, ``/readyz``: open
or bearer token). The role and kind are kept on the endpoint, so a test can enumerate every
route and prove its guard (tests/integration/test_console_access.py)."""

from __future__ import annotations

import functools
import hmac
import logging
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote, urlencode

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.templating import Jinja2Templates

from gateway.config import GatewayConfig
from gateway.console.security import LoginThrottle, Passwords, allowed
from gateway.db.database import Store
from gateway.db.tables import JobRow, UserRow
from gateway.job import stage_timings
from gateway.monitor.health import readiness
from gateway.monitor.metrics import MetricsExporter

log = logging.getLogger(__name__)

TEMPLATES = Path(__file__).parent / "templates"


class Operations(Protocol):
    """What the console asks of the running gateway (implemented in :mod:`gateway.app`)."""

    def resend(self, job_id: int, by: str) -> str: ...
    def cancel(self, job_id: int, by: str) -> str: ...
    def echo(self, destination: str) -> str: ...
    def pause(self, destination: str, by: str) -> str: ...
    def resume(self, destination: str, by: str) -> str: ...
    def self_test(self, destination: str, by: str) -> int: ...
    def scp_listening(self) -> bool: ...


@dataclass
class Console:
    """Everything a request handler needs; kept on ``app.state.console``."""

    cfg: GatewayConfig
    store: Store
    ops: Operations
    templates: Jinja2Templates
    metrics: MetricsExporter
    passwords: Passwords = field(default_factory=Passwords)
    throttle: LoginThrottle = field(default_factory=LoginThrottle)
    started_at: float = field(default_factory=time.time)

    _ready: tuple[float, tuple[bool, dict[str, Any]]] | None = None
    _ready_lock: threading.Lock = field(default_factory=threading.Lock)

    def readiness(self, max_age_s: float = 2.0) -> tuple[bool, dict[str, Any]]:
        """:func:`gateway.monitor.health.readiness` (it writes to the database), at most once
        per ``max_age_s``: probes and page reloads cannot take the receiver's write lock away."""
        with self._ready_lock:
            now = time.monotonic()
            if self._ready is None or now - self._ready[0] > max_age_s:
                self._ready = (now, readiness(self.cfg, self.store, self.ops))
            return self._ready[1]

    def render(self, request: Request, name: str, status: int = 200, **context: Any) -> Response:
        return self.templates.TemplateResponse(request, name, context, status_code=status)


def console(request: Request) -> Console:
    found: Console = request.app.state.console
    return found


def client_address(request: Request) -> str:
    return request.client.host if request.client else ""


def csrf_token(request: Request) -> str:
    """The session's CSRF token (made on first use); every form carries it back."""
    token = request.session.get("csrf")
    if not isinstance(token, str) or len(token) < 32:
        token = secrets.token_urlsafe(32)
        request.session["csrf"] = token
    return token


def csrf_ok(request: Request, form: Mapping[str, Any]) -> bool:
    sent = form.get("csrf")
    kept = request.session.get("csrf")
    return (
        isinstance(sent, str)
        and isinstance(kept, str)
        and len(kept) >= 32
        and hmac.compare_digest(sent.encode(), kept.encode())
    )


def current_user(request: Request) -> UserRow | None:
    """The signed-in account, or None: no session, older than ``auth.session_hours`` since
    sign-in, the account gone or disabled, or its sessions ended (sign-out, password or role
    change) since. A lock (failed guesses by someone else) stops new sign-ins only."""
    name, since = request.session.get("user"), request.session.get("since")
    epoch = request.session.get("epoch")
    if not isinstance(name, str) or not isinstance(since, (int, float)):
        return None
    c = console(request)
    if time.time() - since > c.cfg.http.auth.session_hours * 3600:
        return None
    user = c.store.user(name)
    if user is None or user.disabled or epoch != (user.session_epoch or 0):
        return None
    return user


MAX_FORM_BYTES = 64 * 1024
MAX_ID = 2**62  # ids in paths beyond this are not ours (and would overflow SQLite's integer)


async def read_form(request: Request) -> dict[str, str] | Response:
    """The posted form's text fields; only small URL-encoded forms (what the pages send):
    nothing is spooled to disk for a request, signed in or not."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind not in ("", "application/x-www-form-urlencoded"):
        return PlainTextResponse("415: only URL-encoded forms are accepted", 415)
    try:
        length = int(request.headers.get("content-length", "0") or 0)
    except ValueError:
        return PlainTextResponse("400: bad Content-Length", 400)
    if length > MAX_FORM_BYTES:
        return PlainTextResponse("413: the form is too large", 413)
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        return PlainTextResponse("413: the form is too large", 413)
    form = await request.form()
    return {k: v for k, v in form.items() if isinstance(v, str)}


def _ids_in_range(request: Request) -> bool:
    return all(not isinstance(v, int) or 0 <= v <= MAX_ID for v in request.path_params.values())


def login_redirect(request: Request) -> Response:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)


def back(request: Request, message: str, fallback: str = "/", error: bool = False) -> Response:
    """303 to the page the form was on (same origin only), with a one-time message."""
    referer = request.headers.get("referer", "")
    origin = f"{request.url.scheme}://{request.url.netloc}"
    target = referer[len(origin) :] if referer.startswith(origin + "/") else fallback
    request.session["flash"] = {"text": message[:500], "error": error}
    return RedirectResponse(target or fallback, status_code=303)


Handler = Callable[..., Response]


def page(role: str = "viewer") -> Callable[[Handler], Callable[[Request], Any]]:
    """A GET page for ``role`` and above: ``handler(request, user) -> Response`` (run in a
    worker thread: it may use the database)."""

    def wrap(handler: Handler) -> Callable[[Request], Any]:
        @functools.wraps(handler)
        async def endpoint(request: Request) -> Response:
            user = await run_in_threadpool(current_user, request)
            if user is None:
                return login_redirect(request)
            if not allowed(user.role, role):
                return PlainTextResponse(f"403: this page needs the {role} role", 403)
            if not _ids_in_range(request):
                return PlainTextResponse("404: not found", 404)
            csrf_token(request)
            return await run_in_threadpool(handler, request, user)

        endpoint.guard = ("page", role)  # type: ignore[attr-defined]
        return endpoint

    return wrap


def action(role: str = "operator") -> Callable[[Handler], Callable[[Request], Any]]:
    """A POST action for ``role`` and above: CSRF token checked, then
    ``handler(request, user, form) -> Response``; the handler audits what it did (with who)."""

    def wrap(handler: Handler) -> Callable[[Request], Any]:
        @functools.wraps(handler)
        async def endpoint(request: Request) -> Response:
            user = await run_in_threadpool(current_user, request)
            if user is None:
                return PlainTextResponse("401: sign in first", 401)
            fields = await read_form(request)
            if isinstance(fields, Response):
                return fields
            c = console(request)
            what = f"{request.method} {request.url.path}"
            if not csrf_ok(request, fields):
                await run_in_threadpool(
                    c.store.audit,
                    "action",
                    "refused: csrf",
                    address=client_address(request)[:64],
                    detail=f"{what} by {user.name}",
                )
                return PlainTextResponse("403: the form's CSRF token is missing or wrong", 403)
            if not allowed(user.role, role):
                await run_in_threadpool(
                    c.store.audit,
                    "action",
                    "refused: role",
                    address=client_address(request)[:64],
                    detail=f"{what} by {user.name} ({user.role})",
                )
                return PlainTextResponse(f"403: this action needs the {role} role", 403)
            if not _ids_in_range(request):
                return PlainTextResponse("404: not found", 404)
            return await run_in_threadpool(handler, request, user, fields)

        endpoint.guard = ("action", role)  # type: ignore[attr-defined]
        return endpoint

    return wrap


def probe(handler: Handler) -> Callable[[Request], Any]:
    """``/metrics``, ``/healthz``, ``/readyz``: open, or ``Authorization: Bearer <token>`` when
    ``http.metrics_token`` is set."""

    @functools.wraps(handler)
    async def endpoint(request: Request) -> Response:
        token = console(request).cfg.http.metrics_token
        if token:
            sent = request.headers.get("authorization", "")
            if not hmac.compare_digest(sent.encode(), f"Bearer {token}".encode()):
                return PlainTextResponse(
                    "401: bearer token required", 401, headers={"WWW-Authenticate": "Bearer"}
                )
        return await run_in_threadpool(handler, request)

    endpoint.guard = ("probe", "")  # type: ignore[attr-defined]
    return endpoint


def public(handler: Callable[[Request], Any]) -> Callable[[Request], Any]:
    """The login page and the static files: reachable without a session."""
    handler.guard = ("public", "")  # type: ignore[attr-defined]
    return handler


def day_start(value: str, end: bool = False) -> float | None:
    """A YYYY-MM-DD field as the start (or the end) of that local day; None when empty/bad."""
    try:
        t = datetime.strptime(value.strip(), "%Y-%m-%d").timestamp()
    except ValueError:
        return None
    return t + 86400.0 if end else t


def page_number(request: Request) -> int:
    """The ``page`` query parameter, 1 when absent or bad, at most a million."""
    try:
        return min(max(1, int(request.query_params.get("page", "1"))), 1_000_000)
    except ValueError:
        return 1


def stage_bar(job: JobRow) -> tuple[dict[str, float], float]:
    """A job's seconds per stage and the length its timing bar is drawn against (the total, or
    the stages' sum when they add up to more, e.g. before the job is delivered)."""
    t = stage_timings(dict(job.stages or {}), job.job_outcome)
    return t, max(t.get("total", 0.0), sum(v for k, v in t.items() if k != "total"))


def query_string(params: Mapping[str, Any], **changes: Any) -> str:
    merged = {k: v for k, v in {**params, **changes}.items() if v not in (None, "")}
    return "?" + urlencode(merged) if merged else ""


def audit_action(c: Console, request: Request, user: UserRow, outcome: str, **fields: Any) -> None:
    """The audit row of an operator's action: what, by whom, from where."""
    detail = fields.pop("detail", "")
    c.store.audit(
        "action",
        outcome[:32],
        address=client_address(request)[:64],
        detail=f"{detail} by {user.name}".strip(),
        **fields,
    )
