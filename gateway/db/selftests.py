"""Self-tests: the phantom study sent through the whole chain (gateway.monitor.selftest).

A row is made before anything is sent; its study UID is what marks the study as a self-test
where the job opens its deliveries (:func:`gateway.db.work.self_test_destinations`). Start and
result each write an audit row (event ``selftest``) in the same transaction."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway.db.tables import JobRow, SelfTestRow, StudyRow
from gateway.db.work import _audit

UNFINISHED = ("sending", "running")


class SelfTestQueries:
    """Self-test queries of :class:`gateway.db.database.Store` (a mixin)."""

    session: Callable[..., AbstractContextManager[Session]]

    def add_self_test(self, study_uid: str, destination: str, by: str, now: float) -> int:
        with self.session() as s:
            row = SelfTestRow(
                study_uid=study_uid,
                destination=destination,
                requested_by=by,
                started_at=now,
                state="sending",
                detail="",
                timings={},
            )
            s.add(row)
            s.flush()
            _audit(
                s,
                "selftest",
                "started",
                now,
                study_uid=study_uid,
                destination=destination,
                detail=f"self-test {row.id} by {by or '-'}" + ("" if destination else " (dry run)"),
            )
            return row.id

    def self_tests(self, limit: int = 20) -> list[SelfTestRow]:
        """The latest self-tests, newest first."""
        with self.session() as s:
            q = select(SelfTestRow).order_by(SelfTestRow.id.desc()).limit(limit)
            return list(s.scalars(q))

    def self_test(self, test_id: int) -> SelfTestRow | None:
        with self.session() as s:
            return s.get(SelfTestRow, test_id)

    def update_self_test(self, test_id: int, **fields: Any) -> None:
        """Change an unfinished self-test (state running, job_id, timings so far)."""
        with self.session() as s:
            row = s.get(SelfTestRow, test_id)
            if row is not None and row.state in UNFINISHED:
                for key, value in fields.items():
                    setattr(row, key, value)

    def finish_self_test(
        self,
        test_id: int,
        passed: bool,
        detail: str,
        now: float,
        timings: dict[str, float] | None = None,
        job_id: int | None = None,
    ) -> bool:
        """Passed or failed (``detail`` says why), once: False when it had already ended."""
        with self.session() as s:
            row = s.get(SelfTestRow, test_id)
            if row is None or row.state not in UNFINISHED:
                return False
            row.state = "passed" if passed else "failed"
            row.detail = detail
            row.finished_at = now
            if timings is not None:
                row.timings = timings
            if job_id is not None:
                row.job_id = job_id
            _audit(
                s,
                "selftest",
                row.state,
                now,
                study_uid=row.study_uid,
                job_id=row.job_id,
                destination=row.destination,
                detail=f"self-test {row.id}: {detail}"[:1000],
            )
            return True

    def fail_unfinished_self_tests(self, detail: str, now: float, before: float) -> list[int]:
        """Fail the self-tests still sending or running that started before ``before`` (their
        thread is gone: the gateway restarted, or they outlived their timeout)."""
        with self.session() as s:
            ids = list(
                s.scalars(
                    select(SelfTestRow.id).where(
                        SelfTestRow.state.in_(UNFINISHED), SelfTestRow.started_at < before
                    )
                )
            )
        return [i for i in ids if self.finish_self_test(i, False, detail, now)]

    def self_test_study(self, study_uid: str) -> tuple[StudyRow | None, JobRow | None]:
        """A self-test's study as recorded, and its newest job (None until they exist)."""
        with self.session() as s:
            study = s.get(StudyRow, study_uid)
            job = s.scalar(
                select(JobRow)
                .where(JobRow.study_uid == study_uid)
                .order_by(JobRow.id.desc())
                .limit(1)
            )
            return study, job
