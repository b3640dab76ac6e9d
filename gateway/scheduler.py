"""The scheduler: each gateway process's one loop over the database.

Every ``queue.poll_s``, and at the moment the next study check falls due, it

* runs the study checks that are due (``studies.recheck_at``: the one readiness timer, fed by
  reception events and by assembly's own "look again at" times, such as a series' quiet
  deadline), each claimed first so that one process runs it;
* renews the leases of the jobs and deliveries this process is working on;
* queues again the jobs and deliveries whose lease expired or whose owner died (another
  process, or this one before a restart), and hands this process's queue the work that is
  queued or due in the database but that nobody picked up (e.g. queued by another process).

The task queue stays the fast path; this loop is what makes the database, not the queue, the
truth: nothing that is in the database as to-do can be lost with a queue or a process.

The loop sleeps until the earliest of the next due check (read after each pass) and
``poll_s``; :meth:`Scheduler.wake` cuts the sleep short when this process scheduled a check
that may be due sooner. A check scheduled by another process is seen within ``poll_s``.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Protocol

from gateway.db.database import Store
from gateway.db.records import JobState

log = logging.getLogger(__name__)

HOST = socket.gethostname()
# A step still queued in the database is handed to the queue again at most this far apart.
HAND_AGAIN_MAX_S = 60.0
MIN_WAIT_S = 0.01


def new_owner() -> str:
    """This process's identity in leases: host, pid and a random part (pids are reused)."""
    return f"{HOST}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def owner_is_dead(owner: str) -> bool:
    """Whether a lease owner is a process of this host that no longer runs. Owners on other
    hosts are judged by their lease's expiry only."""
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != HOST or not pid_text.isdigit():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class Dispatch(Protocol):
    def run_job(self, job_id: int) -> None: ...
    def deliver(self, delivery_id: int, delay: float = 0.0) -> None: ...
    def compare(self, structure_set_uid: str) -> None: ...


class Scheduler:
    def __init__(
        self,
        store: Store,
        check_study: Callable[[str], None],
        dispatch: Dispatch,
        owner: str,
        *,
        poll_s: float,
        lease_s: float,
        pickup_after_s: float = 2.0,
        clock: Callable[[], float] = time.time,
        checks: bool = True,
        work: bool = True,
    ):
        """``checks``: run the due study checks (the receiver); ``work``: hand deliveries and
        QA comparisons to the queue (the receiver; a GPU worker only renews, gives back and
        hands jobs)."""
        self.store = store
        self.check_study = check_study
        self.dispatch = dispatch
        self.owner = owner
        self.poll_s = poll_s
        self.lease_s = lease_s
        self.pickup_after_s = pickup_after_s
        self.clock = clock
        self.checks = checks
        self.work = work
        self._renewed = 0.0
        # key -> (next hand-over, times handed)
        self._handed: dict[tuple[str, int | str], tuple[float, int]] = {}
        self._wake = threading.Event()

    def wake(self) -> None:
        """Look at the due checks now (e.g. this process just scheduled one); thread-safe."""
        self._wake.set()

    def run(self, stop: threading.Event) -> None:
        wait = 0.0
        while True:
            self._wake.wait(wait)
            self._wake.clear()
            if stop.is_set():
                return
            try:
                self.tick()
                wait = self.next_wait()
            except Exception:  # the loop must survive a locked or briefly unavailable database
                log.exception("scheduler pass failed; trying again")
                wait = self.poll_s

    def next_wait(self) -> float:
        """Seconds until the next pass: the next study check's due time, at most ``poll_s``."""
        now = self.clock()
        if not self.checks:
            return self.poll_s
        upcoming = self.store.due_checks(now + self.poll_s, limit=1)
        if not upcoming:
            return self.poll_s
        # A floor: a check that keeps falling due in the past must not spin the database.
        return min(self.poll_s, max(MIN_WAIT_S, upcoming[0][1] - now))

    def tick(self) -> None:
        now = self.clock()
        for study_uid, seen in self.store.due_checks(now) if self.checks else ():
            if self.store.claim_recheck(study_uid, seen):
                try:
                    self.check_study(study_uid)
                except Exception:
                    log.exception("study %s: check failed; trying again shortly", study_uid)
                    self.store.schedule_check(study_uid, now + max(1.0, self.poll_s))
        if now - self._renewed >= self.lease_s / 3:
            self.store.renew_leases(self.owner, now, self.lease_s)
            self._renewed = now
        jobs, deliveries = self.store.reclaim(now, owner_is_dead)
        for job_id in jobs:
            log.warning("job %d: its process stopped; running it again", job_id)
            # At once, and its hand-over interval starts again (it was not lost in a queue).
            self._handed[("job", job_id)] = (now + self.pickup_after_s, 0)
            self.dispatch.run_job(job_id)
        for delivery_id in deliveries:
            self._handed.pop(("delivery", delivery_id), None)
        self.store.reclaim_structure_sets(now, owner_is_dead)
        self._pick_up(now)

    def _pick_up(self, now: float) -> None:
        """Hand this process's queue what is queued or due but unclaimed for a while."""
        for job in self.store.jobs_in(JobState.QUEUED):
            if self._hand(("job", job.id), now):
                self.dispatch.run_job(job.id)
        if not self.work:
            return
        for d in self.store.due_deliveries(now - self.pickup_after_s):
            if self._hand(("delivery", d.id), now):
                self.dispatch.deliver(d.id)
        for uid in self.store.pending_structure_sets():
            if self._hand(("qa", uid), now):
                self.dispatch.compare(uid)

    def _hand(self, key: tuple[str, int | str], now: float) -> bool:
        """Whether to hand ``key`` to the queue now: once it has waited ``pickup_after_s``,
        then again after twice as long each time (at most every ``HAND_AGAIN_MAX_S``). The
        database cannot see whether the queue still holds a task (a busy worker's queue holds
        it for as long as inference takes), so a hand-over may duplicate a task, which the
        claims make a no-op; the growing interval keeps such duplicates to a few per step."""
        due, handed = self._handed.setdefault(key, (now + self.pickup_after_s, 0))
        if now < due:
            return False
        wait = min(self.pickup_after_s * 2 ** (handed + 1), HAND_AGAIN_MAX_S)
        self._handed[key] = (now + wait, handed + 1)
        if len(self._handed) > 10000:  # forget steps not seen for a while (done long ago)
            self._handed = {k: v for k, v in self._handed.items() if v[0] > now - 600}
        return True
