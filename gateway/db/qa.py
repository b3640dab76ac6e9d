"""The clinical QA loop's records: the structure sets sent back (claimed under a lease, like
jobs) and the per-ROI QA results. Alerts and incidents: :mod:`gateway.db.register`."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from gateway.db.records import QaRecord, QaStatus, StructureSetRecord, StructureSetState
from gateway.db.tables import QaRow, StructureSetRow
from gateway.db.work import _audit, _reclaim

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

    def release_structure_set(self, uid: str) -> None:
        """COMPARING -> PENDING (an interruption that was not the structure set's fault)."""
        with self.session() as s:
            s.execute(
                update(StructureSetRow)
                .where(
                    StructureSetRow.sop_instance_uid == uid,
                    StructureSetRow.state == StructureSetState.COMPARING.value,
                )
                .values(
                    state=StructureSetState.PENDING.value, lease_owner=None, lease_expires_at=None
                )
            )

    def reclaim_structure_sets(self, now: float, is_dead: Callable[[str], bool]) -> list[str]:
        """Comparisons whose lease expired or whose owner died: pending again."""
        with self.session() as s:
            return _reclaim(
                s,
                StructureSetRow,
                StructureSetState.COMPARING,
                StructureSetState.PENDING,
                now,
                is_dead,
                key=StructureSetRow.sop_instance_uid,
            )

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
