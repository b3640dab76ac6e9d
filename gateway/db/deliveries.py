"""Deliveries: claimed PENDING -> SENDING under a lease, in order per destination; their end
(delivered, parked, rejected) settles the job and writes the audit rows in one transaction."""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import Session

from gateway.db.records import DeliveryState
from gateway.db.tables import DeliveryRow, DestinationStatusRow, JobRow
from gateway.db.work import UNFINISHED_DELIVERY, _audit, _settle, open_deliveries


class DeliveryQueries:
    """Delivery queries of :class:`gateway.db.database.Store` (a mixin)."""

    session: Callable[..., AbstractContextManager[Session]]

    def create_deliveries(self, job_id: int, destinations: Sequence[str]) -> list[int]:
        with self.session() as s:
            return open_deliveries(s, job_id, destinations)

    def claim_delivery(
        self, delivery_id: int, now: float, owner: str = "", lease_s: float = 3600.0
    ) -> bool:
        """Take a due, pending delivery for sending under a lease; False if not due, not
        pending, or an older delivery to the same destination is unfinished."""
        with self.session() as s:
            d = s.get(DeliveryRow, delivery_id)
            if d is None:
                return False
            older = (
                select(DeliveryRow.id)
                .where(
                    DeliveryRow.destination == d.destination,
                    or_(
                        DeliveryRow.job_id < d.job_id,
                        and_(DeliveryRow.job_id == d.job_id, DeliveryRow.id < d.id),
                    ),
                    DeliveryRow.state.in_(UNFINISHED_DELIVERY),
                )
                .exists()
            )
            res = s.execute(
                update(DeliveryRow)
                .where(
                    DeliveryRow.id == delivery_id,
                    DeliveryRow.state == DeliveryState.PENDING.value,
                    DeliveryRow.next_attempt_at <= now + 1.0,
                    ~older,
                )
                .values(
                    state=DeliveryState.SENDING.value,
                    lease_owner=owner or None,
                    lease_expires_at=now + lease_s,
                )
            )
            return bool(res.rowcount)  # type: ignore[attr-defined]

    def delivery(self, delivery_id: int) -> DeliveryRow | None:
        with self.session() as s:
            return s.get(DeliveryRow, delivery_id)

    def deliveries_for(self, job_id: int) -> list[DeliveryRow]:
        with self.session() as s:
            return list(
                s.scalars(
                    select(DeliveryRow).where(DeliveryRow.job_id == job_id).order_by(DeliveryRow.id)
                )
            )

    def due_deliveries(self, now: float) -> list[DeliveryRow]:
        """Pending deliveries that are due, the head of each destination's line first."""
        with self.session() as s:
            return list(
                s.scalars(
                    select(DeliveryRow)
                    .where(
                        DeliveryRow.state == DeliveryState.PENDING.value,
                        DeliveryRow.next_attempt_at <= now,
                    )
                    .order_by(DeliveryRow.job_id, DeliveryRow.id)
                )
            )

    def waiting_deliveries(self) -> dict[str, int]:
        """Per destination: deliveries not yet over (pending or being sent)."""
        with self.session() as s:
            rows = s.execute(
                select(DeliveryRow.destination, func.count())
                .where(DeliveryRow.state.in_(UNFINISHED_DELIVERY))
                .group_by(DeliveryRow.destination)
            )
            return {name: int(n) for name, n in rows}

    def postpone_if_paused(self, delivery_id: int, now: float, until: float) -> bool:
        """A due, pending delivery whose destination an operator paused stays pending, due
        again at ``until``, its attempts not counted; False (nothing changed) otherwise."""
        paused = (
            select(DestinationStatusRow.name)
            .where(
                DestinationStatusRow.name == DeliveryRow.destination,
                DestinationStatusRow.paused.is_(True),
            )
            .exists()
        )
        # One statement: on SQLite it takes the write lock before reading the pause, so a
        # resume (which makes the deliveries due after clearing the pause) is never undone.
        with self.session() as s:
            res = s.execute(
                update(DeliveryRow)
                .where(
                    DeliveryRow.id == delivery_id,
                    DeliveryRow.state == DeliveryState.PENDING.value,
                    DeliveryRow.next_attempt_at <= now + 1.0,
                    paused,
                )
                .values(next_attempt_at=until)
            )
            return bool(res.rowcount)  # type: ignore[attr-defined]

    def deliveries_due_now(self, destination: str, now: float) -> list[int]:
        """Make a destination's pending deliveries due at ``now`` (e.g. on resume); their ids,
        oldest first."""
        with self.session() as s:
            ids = list(
                s.scalars(
                    select(DeliveryRow.id)
                    .where(
                        DeliveryRow.destination == destination,
                        DeliveryRow.state == DeliveryState.PENDING.value,
                    )
                    .order_by(DeliveryRow.job_id, DeliveryRow.id)
                )
            )
            if ids:
                s.execute(
                    update(DeliveryRow)
                    .where(DeliveryRow.id.in_(ids), DeliveryRow.next_attempt_at > now)
                    .values(next_attempt_at=now)
                )
            return ids

    def retry_delivery(self, delivery_id: int, attempts: int, status: str, at: float) -> None:
        """SENDING -> PENDING, due again at ``at`` (not if its job was cancelled meanwhile).
        The failed attempt is audited (outcome ``retry``): the job page lists every attempt."""
        with self.session() as s:
            row = s.get(DeliveryRow, delivery_id)
            if row is not None and row.state == DeliveryState.SENDING.value:
                job = s.get(JobRow, row.job_id)
                _audit(
                    s,
                    "delivery",
                    "retry",
                    time.time(),
                    job_id=row.job_id,
                    study_uid=job.study_uid if job else "",
                    destination=row.destination,
                    detail=f"attempt {attempts} failed: {status}"[:500],
                )
            s.execute(
                update(DeliveryRow)
                .where(
                    DeliveryRow.id == delivery_id, DeliveryRow.state == DeliveryState.SENDING.value
                )
                .values(
                    state=DeliveryState.PENDING.value,
                    attempts=attempts,
                    last_status=status,
                    next_attempt_at=at,
                    lease_owner=None,
                    lease_expires_at=None,
                )
            )

    def finish_delivery(
        self,
        delivery_id: int,
        state: DeliveryState,
        attempts: int,
        status: str,
        outcome: str,
        now: float,
    ) -> int | None:
        """A delivery is over (delivered, parked or rejected): update it, audit it, settle its
        job (and audit that), in one transaction. Return the next pending delivery to the same
        destination, if any."""
        with self.session() as s:
            d = s.get(DeliveryRow, delivery_id)
            assert d is not None
            # Its job was cancelled while it was being sent: only a delivery that arrived
            # changes that.
            if d.state != DeliveryState.CANCELLED.value or state is DeliveryState.DELIVERED:
                d.state = state.value
            d.attempts = attempts
            d.last_status = status
            d.lease_owner = None
            d.lease_expires_at = None
            if state is DeliveryState.DELIVERED:
                d.delivered_at = now
            job = s.get(JobRow, d.job_id)
            assert job is not None
            _audit(
                s,
                "delivery",
                outcome,
                now,
                job_id=d.job_id,
                study_uid=job.study_uid,
                destination=d.destination,
                instances=1,
                detail=f"RTSTRUCT {job.rtstruct_uid or '?'} after {attempts} attempt(s): {status}",
            )
            s.flush()
            _settle(s, job, now)
            return s.scalar(
                select(DeliveryRow.id)
                .where(
                    DeliveryRow.destination == d.destination,
                    DeliveryRow.state == DeliveryState.PENDING.value,
                )
                .order_by(DeliveryRow.job_id, DeliveryRow.id)
                .limit(1)
            )

    def settle_job(self, job_id: int, now: float) -> None:
        with self.session() as s:
            job = s.get(JobRow, job_id)
            if job is not None:
                _settle(s, job, now)

    def update_delivery(self, delivery_id: int, **fields: Any) -> DeliveryRow:
        with self.session() as s:
            row = s.get(DeliveryRow, delivery_id)
            if row is None:
                raise KeyError(delivery_id)
            for k, v in fields.items():
                setattr(row, k, v.value if isinstance(v, enum.Enum) else v)
            s.flush()
            return row
