"""Alerts and the incident register. Every change writes an audit row in the same transaction,
so the register is exported with the audit (``aircon audit``)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from gateway.db.tables import AlertRow, IncidentRow
from gateway.db.work import _audit


class RegisterQueries:
    """Alert and incident queries of :class:`gateway.db.database.Store` (a mixin)."""

    session: Callable[..., AbstractContextManager[Session]]

    # -- alerts ---------------------------------------------------------------------------------

    def raise_alert(self, key: str, now: float, **fields: Any) -> bool:
        """Record an alert once per ``key``; True when it is new (audited)."""
        try:
            with self.session() as s:
                if s.scalar(select(AlertRow.id).where(AlertRow.key == key)) is not None:
                    return False
                row = AlertRow(key=key, at=now, state="open", acknowledged_by="", **fields)
                row.severity = fields.get("severity", "warning")
                s.add(row)
                _audit(
                    s,
                    "alert",
                    row.kind,
                    now,
                    model=f"{row.model} {row.model_version}".strip(),
                    detail=row.message,
                )
                return True
        except IntegrityError:  # another process raised it a moment ago
            return False

    def alerts(self, state: str | None = None, limit: int = 500) -> list[AlertRow]:
        query = select(AlertRow).order_by(AlertRow.at.desc()).limit(limit)
        if state is not None:
            query = query.where(AlertRow.state == state)
        with self.session() as s:
            return list(s.scalars(query))

    def acknowledge_alert(self, alert_id: int, by: str, now: float) -> AlertRow:
        with self.session() as s:
            row = s.get(AlertRow, alert_id)
            if row is None:
                raise KeyError(alert_id)
            row.state, row.acknowledged_by, row.acknowledged_at = "acknowledged", by, now
            _audit(s, "alert", "acknowledged", now, detail=f"alert {alert_id} by {by}")
            return row

    # -- incidents ------------------------------------------------------------------------------

    def add_incident(self, now: float, *, key: str | None = None, **fields: Any) -> int | None:
        """Open an incident (state ``open``) or raise a candidate (``state="candidate"``, with
        a ``key`` so that it is raised once); return its id, None if the key exists."""
        fields.setdefault("state", "open")
        try:
            with self.session() as s:
                if key is not None and s.scalar(
                    select(IncidentRow.id).where(IncidentRow.key == key)
                ):
                    return None
                row = IncidentRow(key=key, opened_at=now, **_incident_defaults(fields))
                s.add(row)
                s.flush()
                _audit_incident(s, row, "candidate" if row.state == "candidate" else "opened", now)
                return int(row.id)
        except IntegrityError:
            return None

    def incidents(self, state: str | None = None, limit: int = 500) -> list[IncidentRow]:
        query = select(IncidentRow).order_by(IncidentRow.id.desc()).limit(limit)
        if state is not None:
            query = query.where(IncidentRow.state == state)
        with self.session() as s:
            return list(s.scalars(query))

    def incident(self, incident_id: int) -> IncidentRow | None:
        with self.session() as s:
            return s.get(IncidentRow, incident_id)

    def update_incident(
        self, incident_id: int, now: float, by: str, to: str, **fields: Any
    ) -> IncidentRow:
        """Move an incident: candidate -> open (accepted) or dismissed; open -> closed.
        Raises KeyError (unknown id) or ValueError (a move that is not allowed)."""
        allowed = {"candidate": ("open", "dismissed"), "open": ("closed",)}
        with self.session() as s:
            row = s.get(IncidentRow, incident_id)
            if row is None:
                raise KeyError(incident_id)
            if to not in allowed.get(row.state, ()):
                raise ValueError(f"incident {incident_id} is {row.state}: it cannot be {to}")
            if row.state == "candidate":
                row.decided_at, row.decided_by = now, by
            if to == "closed":
                row.closed_at, row.closed_by = now, by
            for key, value in fields.items():
                if value:
                    setattr(row, key, value)
            row.state = to
            _audit_incident(s, row, {"open": "accepted"}.get(to, to), now, by)
            return row

    def edit_incident(self, incident_id: int, now: float, by: str, **fields: str) -> IncidentRow:
        """Change the text of an incident (severity, title, description, actions) without
        moving it; audited as ``edited``. Raises KeyError for an unknown id."""
        editable = {"severity", "title", "description", "actions"}
        if not set(fields) <= editable:
            raise ValueError(f"only {', '.join(sorted(editable))} can be edited")
        with self.session() as s:
            row = s.get(IncidentRow, incident_id)
            if row is None:
                raise KeyError(incident_id)
            for key, value in fields.items():
                setattr(row, key, value)
            _audit_incident(s, row, "edited", now, by)
            return row


def _incident_defaults(fields: dict[str, Any]) -> dict[str, Any]:
    text = ("severity", "title", "description", "actions", "study_uid", "model", "roi")
    out = {k: "" for k in (*text, "model_version", "opened_by", "decided_by", "closed_by")}
    return {**out, **{k: v for k, v in fields.items() if v is not None}}


def _audit_incident(s: Session, row: IncidentRow, outcome: str, now: float, by: str = "") -> None:
    who = by or row.opened_by
    _audit(
        s,
        "incident",
        outcome,
        now,
        study_uid=row.study_uid,
        job_id=row.job_id,
        model=f"{row.model} {row.model_version}".strip(),
        detail=f"incident {row.id} ({row.severity or 'no severity'}): {row.title}"
        + (f" - by {who}" if who else ""),
    )
