"""The clinical QA loop's records: returned structure sets (claimed under a lease like jobs),
per-ROI QA results, alerts and the incident register. Every change of an alert or incident
writes an audit row in the same transaction, so the register is exported with the audit."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from gateway.db.records import QaRecord, QaStatus, StructureSetRecord, StructureSetState
from gateway.db.tables import AlertRow, IncidentRow, QaRow, StructureSetRow
from gateway.db.work import _audit

_SET_FIELDS = tuple(f.name for f in dataclasses.fields(StructureSetRecord))
_QA_FIELDS = tuple(f.name for f in dataclasses.fields(QaRecord))
DONE_SETS = (StructureSetState.COMPARED.value, StructureSetState.SUPERSEDED.value)


def _set_record(row: StructureSetRow) -> StructureSetRecord:
    values = {f: getattr(row, f) for f in _SET_FIELDS}
    return StructureSetRecord(**{**values, "state": StructureSetState(row.state)})


def _qa_record(row: QaRow) -> QaRecord:
    values = {f: getattr(row, f) for f in _QA_FIELDS}
    return QaRecord(**{**values, "status": QaStatus(row.status)})


class QaQueries:
    """QA queries of :class:`gateway.db.database.Store` (a mixin)."""

    session: Callable[..., AbstractContextManager[Session]]

    # -- structure sets sent to us ------------------------------------------------------------

    def record_structure_set(self, rec: StructureSetRecord, reason: str) -> None:
        """Record a received structure set: pending, or unpaired with ``reason``. A resend of
        one already compared keeps its result (the same UID is the same structure set)."""
        state = StructureSetState.UNPAIRED if reason else StructureSetState.PENDING
        with self.session() as s:
            row = s.get(StructureSetRow, rec.sop_instance_uid)
            fresh = row is None
            if row is None:
                row = StructureSetRow(sop_instance_uid=rec.sop_instance_uid)
                s.add(row)
            for f in ("study_uid", "series_uid", "frame_of_reference_uid", "path", "size"):
                setattr(row, f, getattr(rec, f))
            row.received_at = rec.received_at
            row.calling_ae = rec.calling_ae
            row.approval_status = rec.approval_status
            row.structure_set_datetime = rec.structure_set_datetime
            if fresh or row.state not in (*DONE_SETS, StructureSetState.COMPARING.value):
                row.state, row.reason = state.value, reason
                row.job_id, row.ai_uid = None, ""
            _audit(
                s,
                "qa",
                "received" if fresh else "received again",
                rec.received_at,
                calling_ae=rec.calling_ae,
                study_uid=rec.study_uid,
                series_uid=rec.series_uid,
                instances=1,
                detail=f"structure set {rec.sop_instance_uid}" + (f": {reason}" if reason else ""),
            )

    def known_structure_sets(self) -> set[str]:
        with self.session() as s:
            return set(s.scalars(select(StructureSetRow.sop_instance_uid)))

    def structure_set(self, uid: str) -> StructureSetRecord | None:
        with self.session() as s:
            row = s.get(StructureSetRow, uid)
            return None if row is None else _set_record(row)

    def structure_sets(
        self, study_uid: str | None = None, limit: int = 200
    ) -> list[StructureSetRecord]:
        query = select(StructureSetRow).order_by(StructureSetRow.received_at.desc()).limit(limit)
        if study_uid is not None:
            query = query.where(StructureSetRow.study_uid == study_uid)
        with self.session() as s:
            return [_set_record(r) for r in s.scalars(query)]

    def pending_structure_sets(self) -> list[str]:
        with self.session() as s:
            return list(
                s.scalars(
                    select(StructureSetRow.sop_instance_uid).where(
                        StructureSetRow.state == StructureSetState.PENDING.value
                    )
                )
            )

    def claim_structure_set(self, uid: str, owner: str, now: float, lease_s: float) -> bool:
        """PENDING -> COMPARING under a lease; False if another process has it."""
        with self.session() as s:
            res = s.execute(
                update(StructureSetRow)
                .where(
                    StructureSetRow.sop_instance_uid == uid,
                    StructureSetRow.state == StructureSetState.PENDING.value,
                )
                .values(
                    state=StructureSetState.COMPARING.value,
                    lease_owner=owner,
                    lease_expires_at=now + lease_s,
                )
            )
            return bool(res.rowcount)  # type: ignore[attr-defined]

    def reclaim_structure_sets(self, now: float, is_dead: Callable[[str], bool]) -> list[str]:
        """Comparisons whose lease expired or whose owner died: pending again."""
        taken = []
        with self.session() as s:
            rows = s.execute(
                select(
                    StructureSetRow.sop_instance_uid,
                    StructureSetRow.lease_owner,
                    StructureSetRow.lease_expires_at,
                ).where(StructureSetRow.state == StructureSetState.COMPARING.value)
            ).all()
            for uid, owner, expires in rows:
                if owner and expires is not None and expires >= now and not is_dead(owner):
                    continue
                res = s.execute(
                    update(StructureSetRow)
                    .where(
                        StructureSetRow.sop_instance_uid == uid,
                        StructureSetRow.state == StructureSetState.COMPARING.value,
                    )
                    .values(
                        state=StructureSetState.PENDING.value,
                        lease_owner=None,
                        lease_expires_at=None,
                    )
                )
                if res.rowcount:  # type: ignore[attr-defined]
                    taken.append(uid)
        return taken

    def finish_structure_set(
        self,
        uid: str,
        now: float,
        *,
        reason: str = "",
        job_id: int | None = None,
        ai_uid: str = "",
        records: Sequence[QaRecord] = (),
        rank: Callable[[StructureSetRecord], Any] | None = None,
    ) -> StructureSetState:
        """Record the comparison (or, with ``reason`` and no records, why it pairs with
        nothing) in one transaction. Of the structure sets answering the same AI job, the one
        ranked highest by ``rank`` counts; the others (and their QA rows) are superseded.
        Returns the state this structure set ends in."""
        with self.session() as s:
            row = s.get(StructureSetRow, uid)
            if row is None:
                raise KeyError(uid)
            row.lease_owner, row.lease_expires_at = None, None
            row.compared_at, row.reason = now, reason
            row.job_id, row.ai_uid = job_id, ai_uid
            s.query(QaRow).filter(QaRow.approved_uid == uid).delete()
            if job_id is None:
                row.state = StructureSetState.UNPAIRED.value
                _audit(s, "qa", "unpaired", now, study_uid=row.study_uid, detail=reason)
                return StructureSetState.UNPAIRED
            row.state = StructureSetState.COMPARED.value
            for rec in records:
                values = {f: getattr(rec, f) for f in _QA_FIELDS if f != "id"}
                s.add(QaRow(**{**values, "status": rec.status.value}))
            s.flush()
            siblings = list(
                s.scalars(
                    select(StructureSetRow).where(
                        StructureSetRow.job_id == job_id,
                        StructureSetRow.state.in_(DONE_SETS),
                    )
                )
            )
            best = max(siblings, key=lambda r: rank(_set_record(r))) if rank else row
            for other in siblings:
                current = other.sop_instance_uid == best.sop_instance_uid
                other.state = (
                    StructureSetState.COMPARED if current else StructureSetState.SUPERSEDED
                ).value
                other.reason = "" if current else f"a later version counts: {best.sop_instance_uid}"
                s.execute(
                    update(QaRow)
                    .where(QaRow.approved_uid == other.sop_instance_uid)
                    .values(superseded=not current)
                )
            _audit(
                s,
                "qa",
                "compared",
                now,
                study_uid=row.study_uid,
                job_id=job_id,
                instances=len(records),
                model=", ".join(sorted({f"{r.model} {r.model_version}" for r in records})),
                detail=f"structure set {uid} against AI structure set {ai_uid}",
            )
            return StructureSetState(row.state)

    def qa_records(
        self, since: float = 0.0, *, current: bool = True, study_uid: str | None = None
    ) -> list[QaRecord]:
        """QA rows compared at or after ``since`` in time order (``current``: not superseded)."""
        query = select(QaRow).where(QaRow.at >= since).order_by(QaRow.at, QaRow.id)
        if current:
            query = query.where(QaRow.superseded.is_(False))
        if study_uid is not None:
            query = query.where(QaRow.study_uid == study_uid)
        with self.session() as s:
            return [_qa_record(r) for r in s.scalars(query)]

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
