"""Accounts and logins: argon2id password hashes, roles, and the per-address login throttle.

The account lock-out after repeated failures is kept in the database
(:meth:`gateway.db.operations.OperationsQueries.record_login`); the throttle here slows down
guessing from one address across accounts (in memory, per process)."""

from __future__ import annotations

import threading
import time
from collections import deque

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from gateway.db.operations import ROLES

RANK = {role: i for i, role in enumerate(ROLES)}
MIN_PASSWORD_LENGTH = 10


class Passwords:
    """argon2id hashes with argon2-cffi's defaults (RFC 9106 low-memory profile)."""

    def __init__(self) -> None:
        self._hasher = PasswordHasher()
        # Verified against for unknown names, so that they cost as much time as known ones.
        self._dummy = self._hasher.hash("not a password of anyone")

    def hash(self, password: str) -> str:
        problem = password_problem(password)
        if problem:
            raise ValueError(problem)
        return self._hasher.hash(password)

    def verify(self, password_hash: str | None, password: str) -> bool:
        try:
            return self._hasher.verify(password_hash or self._dummy, password) and bool(
                password_hash
            )
        except (VerificationError, InvalidHashError):
            return False


def password_problem(password: str) -> str:
    """Why a new password is not acceptable ("" when it is)."""
    if len(password) < MIN_PASSWORD_LENGTH:
        return f"a password needs at least {MIN_PASSWORD_LENGTH} characters"
    if password.strip() != password:
        return "a password may not start or end with a space"
    return ""


def allowed(role: str, needed: str) -> bool:
    return RANK.get(role, -1) >= RANK[needed]


class LoginThrottle:
    """At most ``max_failures`` failed logins from one address within ``window_s``; beyond that
    the address must wait until the oldest failure leaves the window."""

    def __init__(self, max_failures: int = 20, window_s: float = 300.0):
        self.max_failures, self.window_s = max_failures, window_s
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def wait_s(self, address: str, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        with self._lock:
            seen = self._failures.get(address)
            if not seen:
                return 0.0
            while seen and seen[0] <= now - self.window_s:
                seen.popleft()
            if len(seen) < self.max_failures:
                return 0.0
            return seen[0] + self.window_s - now

    def failed(self, address: str, now: float | None = None) -> None:
        """Count an attempt from ``address`` (before it is checked; :meth:`forgive` takes it
        back when it succeeds)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            if len(self._failures) > 10000:  # bounded memory: drop the addresses gone quiet
                quiet = [
                    a for a, q in self._failures.items() if not q or q[-1] <= now - self.window_s
                ]
                for a in quiet:
                    del self._failures[a]
            self._failures.setdefault(address, deque()).append(now)

    def forgive(self, address: str) -> None:
        with self._lock:
            seen = self._failures.get(address)
            if seen:
                seen.pop()
