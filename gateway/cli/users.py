"""``aircon user``: the console's local accounts (passwords hashed with argon2id)."""

from __future__ import annotations

import argparse
import getpass
import sys
import time
from collections.abc import Callable
from typing import Any

from gateway.config import GatewayConfig
from gateway.console.security import Passwords, password_problem
from gateway.db.database import Store
from gateway.db.operations import ROLES
from gateway.errors import GatewayError


def _password(args: argparse.Namespace) -> str:
    """From stdin (``--password-stdin``, for scripts) or asked twice on the terminal."""
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            raise GatewayError("the two passwords differ")
    problem = password_problem(password)
    if problem:
        raise GatewayError(problem)
    return password


def cmd_user(cfg: GatewayConfig, args: argparse.Namespace) -> int:
    store = Store(cfg.database.url)
    now = time.time()
    by = f"cli:{getpass.getuser()}"
    try:
        if args.user_command == "add":
            store.add_user(args.name, args.role, Passwords().hash(_password(args)), now, by=by)
            print(f"user {args.name} added ({args.role})")
        elif args.user_command == "list":
            for u in store.users():
                state = (
                    "disabled"
                    if u.disabled
                    else ("locked" if (u.locked_until or 0) > now else "active")
                )
                print(f"{u.name:<24} {u.role:<9} {state}")
        elif args.user_command == "passwd":
            store.update_user(
                args.name, now, by=by, password_hash=Passwords().hash(_password(args))
            )
            print(f"password of {args.name} changed")
        elif args.user_command == "role":
            store.update_user(args.name, now, by=by, role=args.role)
            print(f"{args.name} is now {args.role}")
        elif args.user_command in ("disable", "enable"):
            store.update_user(args.name, now, by=by, disabled=args.user_command == "disable")
            print(f"{args.name} {args.user_command}d")
        elif args.user_command == "unlock":
            store.update_user(args.name, now, by=by, locked_until=None, failed_logins=0)
            print(f"{args.name} unlocked")
    except KeyError:
        raise GatewayError(f"no user {args.name!r}") from None
    except ValueError as exc:
        raise GatewayError(str(exc)) from None
    return 0


def add_parsers(sub: Any) -> dict[str, Callable[[GatewayConfig, argparse.Namespace], int]]:
    u = sub.add_parser("user", help="console accounts: add, list, passwd, role, disable, unlock")
    us = u.add_subparsers(dest="user_command", required=True)
    a = us.add_parser("add", help="add an account (asks for the password)")
    a.add_argument("name")
    a.add_argument("--role", choices=ROLES, required=True)
    a.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    us.add_parser("list", help="accounts with role and state")
    p = us.add_parser("passwd", help="set a new password (also unlocks)")
    p.add_argument("name")
    p.add_argument("--password-stdin", action="store_true")
    r = us.add_parser("role", help="change an account's role")
    r.add_argument("name")
    r.add_argument("role", choices=ROLES)
    for verb in ("disable", "enable", "unlock"):
        us.add_parser(verb, help=f"{verb} an account").add_argument("name")
    return {"user": cmd_user}
