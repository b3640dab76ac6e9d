"""Accounts (admin only): add, change role, reset password, disable, unlock. Audited."""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.console.security import password_problem
from gateway.console.web import action, audit_action, back, console, page
from gateway.db.operations import ROLES
from gateway.db.tables import UserRow


@page("admin")
def users(request: Request, user: UserRow) -> Response:
    c = console(request)
    return c.render(
        request,
        "users.html.j2",
        title="Users",
        active="/users",
        user=user,
        users=c.store.users(),
        roles=ROLES,
        now=time.time(),
    )


@action("admin")
def add_user(request: Request, user: UserRow, form: dict[str, str]) -> Response:
    c = console(request)
    name, role, password = (
        form.get("name", "").strip(),
        form.get("role", ""),
        form.get("password", ""),
    )
    if (
        not name
        or len(name) > 64
        or not name.replace(".", "").replace("-", "").replace("_", "").isalnum()
    ):
        return back(request, "A user name is 1-64 letters, digits, '.', '-' or '_'.", error=True)
    problem = password_problem(password)
    if problem:
        return back(request, problem, error=True)
    try:
        c.store.add_user(name, role, c.passwords.hash(password), time.time(), by=user.name)
    except ValueError as exc:
        return back(request, str(exc), error=True)
    return back(request, f"User {name} ({role}) added.")


@action("admin")
def change_user(request: Request, user: UserRow, form: dict[str, str]) -> Response:
    c = console(request)
    name = request.path_params["name"]
    fields: dict[str, object] = {}
    if form.get("role"):
        fields["role"] = form["role"]
    if form.get("password"):
        problem = password_problem(form["password"])
        if problem:
            return back(request, problem, error=True)
        fields["password_hash"] = c.passwords.hash(form["password"])
    if form.get("disabled") in ("0", "1"):
        fields["disabled"] = form["disabled"] == "1"
    if form.get("unlock") == "1":
        fields.update(locked_until=None, failed_logins=0)
    if name == user.name and (fields.get("disabled") or fields.get("role", "admin") != "admin"):
        return back(
            request, "You cannot disable yourself or take away your own admin role.", error=True
        )
    if not fields:
        return back(request, "Nothing to change.", error=True)
    try:
        c.store.update_user(name, time.time(), by=user.name, **fields)
    except KeyError:
        return back(request, f"No user {name}.", error=True)
    except ValueError as exc:
        return back(request, str(exc), error=True)
    audit_action(c, request, user, "user changed", detail=f"user {name}")
    return back(request, f"User {name} changed.")


ROUTES = [
    Route("/users", users, methods=["GET"], name="users"),
    Route("/users", add_user, methods=["POST"], name="add_user"),
    Route("/users/{name}", change_user, methods=["POST"], name="change_user"),
]
