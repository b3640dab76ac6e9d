"""Signing in and out. Every attempt is audited; the ``auth.max_failures``-th wrong password in
a row locks the account for ``auth.lockout_minutes``; one address may fail a bounded number
of times per five minutes, whatever the account."""

from __future__ import annotations

import time

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from gateway.console.web import _csrf_ok, action, client_address, console, csrf_token, public
from gateway.db.tables import UserRow


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
    form = await request.form()
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    address = client_address(request)
    name = fields.get("username", "").strip()[:64]
    target = _safe_next(fields.get("next"))

    def again(error: str, status: int) -> Response:
        return c.render(
            request, "login.html.j2", status, next=target, csrf=csrf_token(request), error=error
        )

    if not _csrf_ok(request, fields):
        return PlainTextResponse("403: the form's CSRF token is missing or wrong", 403)
    wait = c.throttle.wait_s(address)
    if wait > 0:
        await run_in_threadpool(
            c.store.audit, "login", "throttled", address=address[:64], detail=f"user {name}"
        )
        return again(f"Too many failed sign-ins from this address: wait {wait:.0f} s.", 429)
    auth = c.cfg.http.auth

    def check() -> tuple[UserRow | None, bool]:
        now = time.time()
        user = c.store.user(name) if name else None
        locked = user is not None and (user.locked_until or 0) > now
        ok = c.passwords.verify(user.password_hash if user else None, fields.get("password", ""))
        ok = ok and user is not None and not user.disabled and not locked
        if locked:
            c.store.audit(
                "login", "refused: locked", now, address=address[:64], detail=f"user {name}"
            )
            return user, False
        row = c.store.record_login(
            name, ok, now, address, auth.max_failures, auth.lockout_minutes * 60
        )
        return row, ok

    user, ok = await run_in_threadpool(check)
    if not ok or user is None:
        c.throttle.failed(address)
        if user is not None and (user.locked_until or 0) > time.time():
            return again("This account is locked after repeated failures; try again later.", 403)
        return again("Wrong user name or password.", 401)
    request.session.clear()
    request.session.update({"user": user.name, "since": time.time()})
    csrf_token(request)
    return RedirectResponse(target, status_code=303)


@action("viewer")
def logout(request: Request, user: UserRow, form: dict[str, str]) -> Response:
    console(request).store.audit(
        "login", "logout", address=client_address(request)[:64], detail=f"user {user.name}"
    )
    request.session.clear()
    return RedirectResponse("/login", status_code=303)


ROUTES = [
    Route("/login", login_form, methods=["GET"], name="login_form"),
    Route("/login", login, methods=["POST"], name="login"),
    Route("/logout", logout, methods=["POST"], name="logout"),
]
