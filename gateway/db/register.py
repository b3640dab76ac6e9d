"""Alerts and the incident register. Every change writes an audit row in the same transaction,
so the register is exported with the audit (``aircon audit``)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from gateway.db.records import DeliveryState, JobState
from gateway.db.tables import AlertRow, DeliveryRow, IncidentRow, JobRow
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
        """An open alert was seen by ``by`` (audited). Raises KeyError for an unknown alert,
        ValueError for one no longer open (acknowledged or resolved: left as it is)."""
        with self.session() as s:
            row = s.get(AlertRow, alert_id)
            if row is None:
                raise KeyError(alert_id)
            if row.state != "open":
                raise ValueError(f"alert {alert_id} is {row.state}, no longer open")
            row.state, row.acknowledged_by, row.acknowledged_at = "acknowledged", by, now
            _audit(s, "alert", "acknowledged", now, detail=f"alert {alert_id} by {by}")
            return row

    # -- alert lifecycle (gateway.monitor.alerts) -----------------------------------------------

    def open_alert(self, subject: str, now: float, **fields: Any) -> AlertRow | None:
        """Open an alert for a condition's ``subject`` unless one is open or acknowledged; its
        key is ``subject#n``, n counting the subject's occurrences, so that every process that
        sees the same condition opens the same row once (the key is unique). Audited."""
        prefix = f"{subject}#"
        try:
            with self.session() as s:
                rows = list(
                    s.scalars(
                        select(AlertRow).where(AlertRow.key.startswith(prefix, autoescape=True))
                    )
                )
                if any(r.state != "resolved" for r in rows):
                    return None
                row = AlertRow(
                    key=f"{prefix}{len(rows) + 1}",
                    at=now,
                    state="open",
                    acknowledged_by="",
                    **fields,
                )
                s.add(row)
                s.flush()
                _audit_alert(s, row, "opened", now)
                return row
        except IntegrityError:  # another process opened it a moment ago
            return None

    def unresolved_alerts(self) -> list[AlertRow]:
        with self.session() as s:
            query = select(AlertRow).where(AlertRow.state != "resolved").order_by(AlertRow.id)
            return list(s.scalars(query))

    def resolve_alert(self, alert_id: int, now: float) -> bool:
        """Its condition ended; True when this call resolved it (audited)."""
        with self.session() as s:
            done = s.execute(
                update(AlertRow)
                .where(AlertRow.id == alert_id, AlertRow.state != "resolved")
                .values(state="resolved", resolved_at=now)
            ).rowcount  # type: ignore[attr-defined]
            if done:
                row = s.get(AlertRow, alert_id)
                if row is not None:
                    _audit_alert(s, row, "resolved", now)
            return bool(done)

    def alerts_to_notify(self, now: float, resend_s: float) -> list[AlertRow]:
        """Open alerts never sent or last sent ``resend_s`` ago (acknowledged ones are not
        re-sent), and resolved ones that were sent but whose end was not."""
        due = or_(AlertRow.notified_at.is_(None), AlertRow.notified_at <= now - resend_s)
        with self.session() as s:
            query = (
                select(AlertRow)
                .where(
                    or_(
                        (AlertRow.state == "open") & due,
                        (AlertRow.state == "resolved")
                        & (AlertRow.notified_count > 0)
                        & AlertRow.resolved_notified.is_(False),
                    )
                )
                .order_by(AlertRow.id)
            )
            return list(s.scalars(query))

    def claim_alert_send(
        self, alert_id: int, seen: float | None, now: float, message: str | None = None
    ) -> bool:
        """Take the next send of an open alert: True for the one process whose view of the
        last send (``seen``) is still current."""
        last = AlertRow.notified_at.is_(None) if seen is None else AlertRow.notified_at == seen
        values: dict[str, Any] = {
            "notified_at": now,
            "notified_count": AlertRow.notified_count + 1,
        }
        if message is not None:
            values["message"] = message
        with self.session() as s:
            stmt = update(AlertRow).where(AlertRow.id == alert_id, AlertRow.state == "open", last)
            return bool(s.execute(stmt.values(**values)).rowcount)  # type: ignore[attr-defined]

    def release_alert_send(self, alert_id: int, seen: float | None, now: float) -> None:
        """No sink took it: undo the claim so that the next check sends it again."""
        with self.session() as s:
            s.execute(
                update(AlertRow)
                .where(AlertRow.id == alert_id, AlertRow.notified_at == now)
                .values(notified_at=seen, notified_count=AlertRow.notified_count - 1)
            )

    def claim_resolved_send(self, alert_id: int, undo: bool = False) -> bool:
        """Take (or, with ``undo``, give back) the one "resolved" message of an alert."""
        with self.session() as s:
            stmt = update(AlertRow).where(
                AlertRow.id == alert_id,
                AlertRow.state == "resolved",
                AlertRow.resolved_notified.is_(undo),
            )
            return bool(
                s.execute(stmt.values(resolved_notified=not undo)).rowcount  # type: ignore[attr-defined]
            )

    def count_jobs(self, *states: JobState) -> int:
        with self.session() as s:
            query = select(func.count(JobRow.id)).where(JobRow.state.in_([x.value for x in states]))
            return int(s.scalar(query) or 0)

    def parked_deliveries(self) -> list[tuple[DeliveryRow, str]]:
        """Deliveries parked (state failed), each with its job's Study Instance UID."""
        with self.session() as s:
            query = (
                select(DeliveryRow, JobRow.study_uid)
                .join(JobRow, JobRow.id == DeliveryRow.job_id)
                .where(DeliveryRow.state == DeliveryState.FAILED.value)
                .order_by(DeliveryRow.id)
            )
            return [(d, uid) for d, uid in s.execute(query).all()]

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


def _audit_alert(s: Session, row: AlertRow, outcome: str, now: float) -> None:
    _audit(
        s,
        "alert",
        outcome,
        now,
        job_id=row.job_id,
        destination=row.destination,
        model=f"{row.model} {row.model_version}".strip(),
        detail=f"alert {row.id} {row.key}: {row.message.splitlines()[0] if row.message else ''}",
    )
