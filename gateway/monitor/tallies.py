"""Running totals of the database for ``/metrics``, brought up to date at each scrape by reading
only what changed since the last one, so that a scrape stays fast with years of jobs.

* :class:`AuditTotals`: counts of audit rows (append-only). Rows written more than
  ``SETTLE_S`` ago are added to the totals once; the newer tail is counted again at every
  scrape, so a row whose transaction committed after a row with a higher id (PostgreSQL's
  sequences allow that) is still counted, unless its transaction stayed open that long.
* :class:`StageTimes`: the stage-duration histogram of the jobs that ended (done or failed),
  per job so that a job run again replaces its durations. A job is read again when it leaves
  the unfinished states, when the audit says it ended, or when it is new.

A new object reads everything once (the first scrape of a process).
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from gateway.db.records import TERMINAL
from gateway.db.tables import AuditRow, JobRow
from gateway.job import STAGE_SPANS

SETTLE_S = 60.0
# Upper bounds (seconds) of the stage-duration buckets: from building an RTSTRUCT (well under a
# second) to a study's assembly timeout (``assembly.study_timeout_s``, 30 min by default).
BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
# Per model, from the job's outcome (JobOutcome.models); the other stages are the whole job's.
MODEL_STAGES = (("volume", "volume_s"), ("wait", "wait_s"), ("segment", "segment_s"))
ENDED = [s.value for s in TERMINAL]
COUNTED_EVENTS = ("received", "association", "job", "delivery")
_CHUNK = 500  # ids per IN (...) list


class AuditTotals:
    """Audit rows counted by key: ``("received", outcome)`` sums instances;
    ``("association", outcome)``, ``("job", rule, outcome)``, ``("delivery", destination,
    outcome)`` count rows."""

    def __init__(self) -> None:
        self.settled_id = 0
        self.settled: Counter[tuple[str, ...]] = Counter()

    def read(self, s: Session, now: float) -> tuple[Counter[tuple[str, ...]], set[int]]:
        """(totals, ids of the jobs that the audit's unsettled tail says ended)."""
        mark = s.scalar(
            select(func.max(AuditRow.id)).where(
                AuditRow.id > self.settled_id, AuditRow.at < now - SETTLE_S
            )
        )
        if mark is not None:
            self.settled.update(_count(s, self.settled_id, mark))
            self.settled_id = mark
        tail = _count(s, self.settled_id, None)
        ended = s.scalars(
            select(AuditRow.job_id)
            .where(AuditRow.id > self.settled_id, AuditRow.event == "job")
            .distinct()
        )
        return self.settled + tail, {i for i in ended if i is not None}


def _count(s: Session, after: int, upto: int | None) -> Counter[tuple[str, ...]]:
    query = (
        select(
            AuditRow.event,
            AuditRow.outcome,
            AuditRow.destination,
            func.coalesce(JobRow.rule, ""),
            func.count(),
            func.coalesce(func.sum(AuditRow.instances), 0),
        )
        .select_from(AuditRow)
        .outerjoin(JobRow, (JobRow.id == AuditRow.job_id) & (AuditRow.event == "job"))
        .where(AuditRow.id > after, AuditRow.event.in_(COUNTED_EVENTS))
        .group_by(AuditRow.event, AuditRow.outcome, AuditRow.destination, JobRow.rule)
    )
    if upto is not None:
        query = query.where(AuditRow.id <= upto)
    out: Counter[tuple[str, ...]] = Counter()
    for event, outcome, destination, rule, rows, instances in s.execute(query):
        if event == "received":
            out[(event, outcome)] += int(instances)
        elif event == "job":
            out[(event, rule, outcome)] += rows
        elif event == "delivery":
            out[(event, destination, outcome)] += rows
        else:
            out[(event, outcome)] += rows
    return out


class StageTimes:
    """Bucket counts, sums and counts per (stage, model) column; ``model`` is "" for the
    stages of a whole job."""

    def __init__(self, models: Sequence[str]) -> None:
        self.columns: list[tuple[str, str]] = []
        self._exprs: list[Any] = []
        per_model = {stage for stage, _ in MODEL_STAGES}
        for stage, start, end in STAGE_SPANS:
            if stage not in per_model:
                self.columns.append((stage, ""))
                self._exprs.append(JobRow.stages[end].as_float() - JobRow.stages[start].as_float())
        for model in models:
            ran = JobRow.outcome[("models", model, "state")].as_string() == "done"
            for stage, key in MODEL_STAGES:
                self.columns.append((stage, model))
                self._exprs.append(case((ran, JobRow.outcome[("models", model, key)].as_float())))
        n = len(self.columns)
        self.buckets = [[0] * (len(BUCKETS) + 1) for _ in range(n)]  # not cumulative; +Inf last
        self.sums = [0.0] * n
        self.counts = [0] * n
        self._jobs: dict[int, tuple[float | None, ...]] = {}
        self._open: set[int] = set()
        self._max_id = 0
        self._loaded = False

    def refresh(self, s: Session, unfinished: set[int], ended: Iterable[int]) -> None:
        """Bring the totals up to date: ``unfinished`` are the ids of the jobs not ended now,
        ``ended`` those the audit says ended lately."""
        for job_id in unfinished & self._jobs.keys():  # run again: its durations will change
            self._apply(self._jobs.pop(job_id), -1)
        if not self._loaded:
            self._read(s, select(JobRow.id).where(JobRow.state.in_(ENDED)).scalar_subquery())
            self._loaded = True
        else:
            again = sorted(((self._open - unfinished) | set(ended)) - unfinished)
            for k in range(0, len(again), _CHUNK):
                self._read(s, again[k : k + _CHUNK])
            newer = select(JobRow.id).where(JobRow.id > self._max_id, JobRow.state.in_(ENDED))
            self._read(s, newer.scalar_subquery())
        self._open = set(unfinished)
        self._max_id = max([self._max_id, *unfinished])

    def _read(self, s: Session, ids: Any) -> None:
        query = select(JobRow.id, JobRow.state, *self._exprs).where(JobRow.id.in_(ids))
        for job_id, state, *values in s.execute(query):
            old = self._jobs.pop(job_id, None)
            if old is not None:
                self._apply(old, -1)
            self._max_id = max(self._max_id, job_id)
            if state in ENDED:
                durations = tuple(None if v is None else float(v) for v in values)
                self._jobs[job_id] = durations
                self._apply(durations, +1)

    def _apply(self, durations: tuple[float | None, ...], sign: int) -> None:
        for c, value in enumerate(durations):
            if value is None:
                continue
            self.counts[c] += sign
            self.sums[c] += sign * value
            self.buckets[c][bisect.bisect_left(BUCKETS, value)] += sign
