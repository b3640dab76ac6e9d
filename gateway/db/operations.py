"""What the operator's console keeps: accounts, the destinations' echo status and pause
switch, and the state of each part of a running gateway (models warm, SCP listening).
Account changes, logins and pauses write an audit row in the same transaction."""

from __future__ import annotations

import re
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from gateway.db.tables import ComponentRow, DestinationStatusRow, UserRow
from gateway.db.work import _audit

ROLES = ("viewer", "operator", "admin")
USER_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")


class OperationsQueries:
    """Account, destination-status and component queries of :class:`Store` (a mixin)."""

    session: Callable[..., AbstractContextManager[Session]]

    # -- accounts -------------------------------------------------------------------------------

    def add_user(self, name: str, role: str, password_hash: str, now: float, by: str = "") -> int:
        """Create an account; raises ValueError when the name is taken or the role unknown."""
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r} (one of {', '.join(ROLES)})")
        if not USER_NAME.fullmatch(name):
            raise ValueError("a user name is 1-64 letters, digits, '.', '-' or '_'")
        try:
            with self.session() as s:
                row = UserRow(name=name, role=role, password_hash=password_hash, created_at=now)
                s.add(row)
                s.flush()
                _audit(s, "user", "added", now, detail=f"user {name} role {role} by {by or '-'}")
                return row.id
        except IntegrityError:
            raise ValueError(f"user {name!r} exists") from None

    def user(self, name: str) -> UserRow | None:
        with self.session() as s:
            return s.scalar(select(UserRow).where(UserRow.name == name))

    def users(self) -> list[UserRow]:
        with self.session() as s:
            return list(s.scalars(select(UserRow).order_by(UserRow.name)))

    def update_user(self, name: str, now: float, by: str = "", **fields: Any) -> UserRow:
        """Change an account (role, password_hash, disabled, ...); audited without the hash."""
        if "role" in fields and fields["role"] not in ROLES:
            raise ValueError(f"unknown role {fields['role']!r} (one of {', '.join(ROLES)})")
        with self.session() as s:
            row = s.scalar(select(UserRow).where(UserRow.name == name))
            if row is None:
                raise KeyError(name)
            for key, value in fields.items():
                setattr(row, key, value)
            if "password_hash" in fields:
                row.failed_logins, row.locked_until = 0, None
            if {"password_hash", "role", "disabled"} & set(fields):
                row.session_epoch = (row.session_epoch or 0) + 1
            shown = ", ".join(
                f"{k}={'(changed)' if k == 'password_hash' else v}" for k, v in fields.items()
            )
            _audit(s, "user", "changed", now, detail=f"user {name}: {shown} by {by or '-'}")
            return row

    def record_login(
        self, name: str, ok: bool, now: float, address: str, max_failures: int, lockout_s: float
    ) -> UserRow | None:
        """Count a login attempt (audited) with conditional, atomic updates, so that parallel
        attempts cannot lose a failure or undo a lock: the ``max_failures``-th failure in a row
        locks the account for ``lockout_s``; a right password on a locked account is refused
        (audited ``refused: locked``) and returns the account with its lock. Unknown names are
        audited too (None)."""
        addr = address[:64]
        with self.session() as s:
            if ok:
                res = s.execute(
                    update(UserRow)
                    .where(
                        UserRow.name == name,
                        or_(UserRow.locked_until.is_(None), UserRow.locked_until <= now),
                    )
                    .values(failed_logins=0, locked_until=None, last_login_at=now)
                )
                row = s.scalar(select(UserRow).where(UserRow.name == name))
                if row is None:
                    _audit(s, "login", "unknown user", now, address=addr)
                elif res.rowcount:  # type: ignore[attr-defined]
                    _audit(s, "login", "ok", now, address=addr, detail=f"user {name}")
                else:
                    _audit(s, "login", "refused: locked", now, address=addr, detail=f"user {name}")
                return row
            res = s.execute(
                update(UserRow)
                .where(UserRow.name == name)
                .values(failed_logins=UserRow.failed_logins + 1)
            )
            if not res.rowcount:  # type: ignore[attr-defined]
                _audit(s, "login", "unknown user", now, address=addr)
                return None
            row = s.scalar(select(UserRow).where(UserRow.name == name))
            assert row is not None
            outcome = "failed"
            if row.failed_logins >= max_failures:
                row.locked_until, row.failed_logins = now + lockout_s, 0
                outcome = "locked"
            detail = f"user {name}" + (
                f" locked for {lockout_s:.0f} s" if outcome == "locked" else ""
            )
            _audit(s, "login", outcome, now, address=addr, detail=detail)
            return row

    def end_sessions(self, name: str, now: float) -> None:
        """Sign-out: every session of the account made before ends (its epoch moves on)."""
        with self.session() as s:
            s.execute(
                update(UserRow)
                .where(UserRow.name == name)
                .values(session_epoch=UserRow.session_epoch + 1)
            )

    # -- destinations ---------------------------------------------------------------------------

    def destination_status(self) -> dict[str, DestinationStatusRow]:
        with self.session() as s:
            return {r.name: r for r in s.scalars(select(DestinationStatusRow))}

    def record_echo(
        self, name: str, up: bool, now: float, rtt_ms: float | None, error: str
    ) -> bool:
        """Store one C-ECHO result; True when the destination changed between up and down
        (audited then)."""
        with self.session() as s:
            row = s.get(DestinationStatusRow, name)
            if row is None:
                row = DestinationStatusRow(name=name, paused=False, paused_by="", last_error="")
                s.add(row)
            changed = row.up is not None and bool(row.up) != up
            row.up, row.checked_at, row.rtt_ms = up, now, rtt_ms
            if up:
                row.last_success_at, row.down_since, row.last_error = now, None, ""
            else:
                row.last_error = error[:500]
                if row.down_since is None:
                    row.down_since = now
            if changed:
                _audit(s, "echo", "up" if up else "down", now, destination=name, detail=error[:200])
            return changed

    def set_paused(self, name: str, paused: bool, by: str, now: float) -> None:
        with self.session() as s:
            row = s.get(DestinationStatusRow, name)
            if row is None:
                row = DestinationStatusRow(name=name, last_error="")
                s.add(row)
            row.paused, row.paused_by, row.paused_at = paused, by if paused else "", now
            outcome = "paused" if paused else "resumed"
            _audit(s, "destination", outcome, now, destination=name, detail=f"by {by}")

    def paused_destinations(self) -> set[str]:
        with self.session() as s:
            q = select(DestinationStatusRow.name).where(DestinationStatusRow.paused.is_(True))
            return set(s.scalars(q))

    # -- components -----------------------------------------------------------------------------

    def set_component(
        self, name: str, state: str, now: float, detail: str = "", owner: str = ""
    ) -> None:
        with self.session() as s:
            row = s.get(ComponentRow, name)
            if row is None:
                s.add(
                    ComponentRow(name=name, state=state, detail=detail, owner=owner, updated_at=now)
                )
            else:
                row.state, row.detail, row.owner, row.updated_at = state, detail, owner, now

    def components(self) -> dict[str, ComponentRow]:
        with self.session() as s:
            return {r.name: r for r in s.scalars(select(ComponentRow))}
