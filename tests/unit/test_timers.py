"""The readiness timer fires at the quiet deadline, and a queued task reaches an idle worker at
once: no pass of a poll loop in between."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from huey import SqliteHuey

from gateway.queue_wakeup import WakingSqliteStorage
from gateway.scheduler import MIN_WAIT_S, Scheduler


class FakeStore:
    """The scheduler's store seam: study checks by due time; nothing else to do."""

    def __init__(self) -> None:
        self.checks: dict[str, float] = {}
        self.lock = threading.Lock()

    def due_checks(self, now: float, limit: int = 100) -> list[tuple[str, float]]:
        with self.lock:
            due = sorted((at, uid) for uid, at in self.checks.items() if at <= now)
        return [(uid, at) for at, uid in due[:limit]]

    def claim_recheck(self, study_uid: str, seen: float) -> bool:
        with self.lock:
            return self.checks.pop(study_uid, None) == seen

    def schedule_check(self, study_uid: str, at: float) -> None:
        with self.lock:
            self.checks[study_uid] = min(at, self.checks.get(study_uid, at))

    def renew_leases(self, *args: object) -> None: ...
    def reclaim(self, *args: object) -> tuple[list[int], list[int]]:
        return [], []

    def reclaim_structure_sets(self, *args: object) -> None: ...
    def jobs_in(self, *args: object) -> list[object]:
        return []

    def due_deliveries(self, *args: object) -> list[object]:
        return []

    def pending_structure_sets(self) -> list[str]:
        return []


class NoDispatch:
    def run_job(self, job_id: int) -> None: ...
    def deliver(self, delivery_id: int, delay: float = 0.0) -> None: ...
    def compare(self, structure_set_uid: str) -> None: ...


def scheduler(store: FakeStore, ran: list[tuple[str, float]], poll_s: float, clock=time.time):  # noqa: ANN001, ANN201
    return Scheduler(
        store,  # type: ignore[arg-type]
        lambda uid: ran.append((uid, time.time())),
        NoDispatch(),
        "test:1:x",
        poll_s=poll_s,
        lease_s=30.0,
        clock=clock,
    )


def test_the_next_pass_is_due_when_the_next_check_is() -> None:
    store, now = FakeStore(), 1000.0
    s = scheduler(store, [], poll_s=1.0, clock=lambda: now)
    assert s.next_wait() == 1.0  # nothing scheduled: the ordinary poll
    store.schedule_check("1.2.3", now + 0.4)
    assert s.next_wait() == pytest.approx(0.4)  # the quiet deadline, not the next poll
    store.schedule_check("1.2.4", now + 0.1)
    assert s.next_wait() == pytest.approx(0.1)
    store.checks = {"1.2.5": now + 30.0}
    assert s.next_wait() == 1.0  # far away: polled as usual meanwhile
    store.checks = {"1.2.6": now - 5.0}
    assert s.next_wait() == MIN_WAIT_S  # overdue: at once, but never a busy loop


def test_a_study_check_runs_at_its_deadline_not_on_the_poll() -> None:
    store, ran = FakeStore(), []
    stop = threading.Event()
    s = scheduler(store, ran, poll_s=3.0)
    deadline = time.time() + 0.4
    store.schedule_check("1.2.3", deadline)
    t = threading.Thread(target=s.run, args=(stop,), daemon=True)
    t.start()
    try:
        while not ran and time.time() < deadline + 3.0:
            time.sleep(0.005)
        assert ran, "the check never ran"
        [(uid, at)] = ran
        assert uid == "1.2.3"
        assert deadline - 0.01 <= at <= deadline + 0.15  # 3 s poll: the timer, not the poll
    finally:
        stop.set()
        s.wake()
        t.join(2)
    assert not t.is_alive()


def test_wake_runs_a_check_scheduled_in_this_process_at_once() -> None:
    store, ran = FakeStore(), []
    stop = threading.Event()
    s = scheduler(store, ran, poll_s=5.0)
    t = threading.Thread(target=s.run, args=(stop,), daemon=True)
    t.start()
    try:
        time.sleep(0.2)  # the first pass found nothing: now asleep for poll_s
        woken = time.time()
        store.schedule_check("1.2.3", woken)
        s.wake()
        while not ran and time.time() < woken + 3.0:
            time.sleep(0.005)
        assert ran and ran[0][1] - woken < 0.2
    finally:
        stop.set()
        s.wake()
        t.join(2)


def _huey(path: Path, wait_s: float) -> SqliteHuey:
    return SqliteHuey(
        "t", filename=str(path), results=False, storage_class=WakingSqliteStorage, wait_s=wait_s
    )


def test_an_idle_worker_takes_a_task_queued_in_its_process_at_once(tmp_path: Path) -> None:
    storage = _huey(tmp_path / "q.db", wait_s=5.0).storage
    got: list[tuple[bytes | None, float]] = []
    worker = threading.Thread(target=lambda: got.append((storage.dequeue(), time.time())))
    worker.start()
    time.sleep(0.1)  # the worker is waiting in dequeue
    queued = time.time()
    storage.enqueue(b"task")
    worker.join(6)
    [(data, at)] = got
    assert data == b"task"
    assert at - queued < 0.2  # not the 5 s wait


def test_a_task_queued_by_another_process_is_seen_within_the_wait(tmp_path: Path) -> None:
    here = _huey(tmp_path / "q.db", wait_s=0.3).storage
    elsewhere = _huey(tmp_path / "q.db", wait_s=0.3).storage  # its own connection, no signal
    t0 = time.time()
    assert here.dequeue() is None  # nothing queued: back after wait_s, for Huey to ask again
    assert 0.25 <= time.time() - t0 < 2.0
    elsewhere.enqueue(b"from resend")
    assert here.dequeue() == b"from resend"
