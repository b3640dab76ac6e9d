"""Signing in and out. Every attempt is audited; the ``auth.max_failures``-th wrong password in
a row locks the account for ``auth.lockout_minutes`` (counted atomically in the database, so
parallel guesses cannot lose a failure); one address may try a bounded number of times per five
minutes, whatever the account. Every failure gets the same answer: it does not tell whether the
name exists or the account is locked."""

from __future__ import annotations

import time

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from gateway.console.web import (
    action,
    client_address,
    console,
    csrf_ok,
    csrf_token,
    public,
    read_form,
)
from gateway.db.tables import UserRow

FAILED = (
    "Sign-in failed: wrong user name or password, or the account is locked for a while after "
    "repeated failures."
)


def _safe_next(target: str | None) -> str:
    """Only a path on this site (never //host or a scheme): no open redirect."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


@public
async def login_form(request: Request) -> Response:
    c = console(request)
    return c.render(
        request,
        "login.html.j2",
        next=_safe_next(request.query_params.get("next")),
        csrf=csrf_token(request),
        error="",
    )


@public
async def login(request: Request) -> Response:
    c = console(request)
    fields = await read_form(request)
    if isinstance(fields, Response):
        return fields
    address = client_address(request)
    name = fields.get("username", "").strip()[:64]
    target = _safe_next(fields.get("next"))

    def again(error: str, status: int) -> Response:
        return c.render(
            request, "login.html.j2", status, next=target, csrf=csrf_token(request), error=error
        )

    if not csrf_ok(request, fields):
        return again("The form had expired: sign in again.", 403)
    wait = c.throttle.wait_s(address)
    if wait > 0:
        await run_in_threadpool(
            c.store.audit, "login", "throttled", address=address[:64], detail=f"user {name}"
        )
        return again(f"Too many sign-in attempts from this address: wait {wait:.0f} s.", 429)
    c.throttle.failed(address)  # counted before the check: parallel guesses are counted too
    auth = c.cfg.http.auth

    def check() -> UserRow | None:
        now = time.time()
        user = c.store.user(name) if name else None
        ok = c.passwords.verify(user.password_hash if user else None, fields.get("password", ""))
        ok = ok and user is not None and not user.disabled
        row = c.store.record_login(
            name, ok, now, address, auth.max_failures, auth.lockout_minutes * 60
        )
        locked = row is not None and (row.locked_until or 0) > now
        return row if ok and not locked else None

    user = await run_in_threadpool(check)
    if user is None:
        return again(FAILED, 401)
    c.throttle.forgive(address)
    request.session.clear()
    request.session.update(
        {"user": user.name, "since": time.time(), "epoch": user.session_epoch or 0}
    )
    csrf_token(request)
    return RedirectResponse(target, status_code=303)


@action("viewer")
def logout(request: Request, user: UserRow, form: dict[str, str]) -> Response:
    c = console(request)
    c.store.end_sessions(user.name, time.time())
    c.store.audit(
        "login", "logout", address=client_address(request)[:64], detail=f"user {user.name}"
    )
    request.session.clear()
    return RedirectResponse("/login", status_code=303)


ROUTES = [
    Route("/login", login_form, methods=["GET"], name="login_form"),
    Route("/login", login, methods=["POST"], name="login"),
    Route("/logout", logout, methods=["POST"], name="logout"),
]
