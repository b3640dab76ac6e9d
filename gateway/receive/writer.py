"""The instance writer: received instances' rows written behind the acknowledgement.

The Storage SCP answers success once the instance file is durable in the spool (fsynced); its
row is queued here, and one background thread writes what has queued up in one transaction
(group commit). An association's end is queued behind its rows (:class:`Ended`): the study
check it schedules never sees a finished association whose instances are missing.

While the database takes nothing (a server restarting, a full disk), the rows and ends are held,
in order, and written again every few seconds, never dropped while the process lives; meanwhile
:attr:`InstanceWriter.failing` is set and reception answers "out of resources" (0xA700), so the
senders retry instead of being told "stored" for rows that cannot be written. A row the database
refuses on its own (others are written) is logged and left to the spool: the spool is the
durable record, and ``recovery.recover_spool`` records it at the next start, as any row lost to
a crash. ``stop()`` writes everything queued (held rows are given up to the spool then).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from sqlalchemy.exc import SQLAlchemyError

from gateway.db.database import Store
from gateway.db.reception import GroupRefused, Received
from gateway.errors import UidConflict

log = logging.getLogger(__name__)

_STOP = object()
RETRY_DELAYS_S = (0.05, 0.2, 0.5, 1.0)  # then row by row; then held and tried every HOLD_S
HOLD_S = 5.0


@dataclass(frozen=True)
class Ended:
    """An association that sent these studies ended: recorded after the rows queued before it;
    ``then`` runs once it is recorded (admission forgets the studies)."""

    study_uids: tuple[str, ...]
    clean: bool
    at: float
    then: Callable[[], None] = field(default=lambda: None, compare=False)


class InstanceWriter:
    """One thread that records queued instances in groups of at most ``max_group``."""

    def __init__(
        self,
        store: Store,
        *,
        max_group: int = 500,
        linger_s: float = 0.02,
        retry_delays_s: Sequence[float] = RETRY_DELAYS_S,
        hold_s: float = HOLD_S,
    ):
        self.store = store
        self.max_group = max_group
        # Waiting a little after the first row collects a bigger group: fewer transactions,
        # less CPU per row. No acknowledgement waits for it; a flush or stop cuts it short.
        self.linger_s = linger_s
        self.retry_delays_s = tuple(retry_delays_s)
        self.hold_s = hold_s
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._held: list[Received | Ended] = []  # in order; written before anything newer
        self.failing = False  # the database took nothing at the last try: refuse new rows
        self.groups = 0  # transactions written, for tests and the bench
        self.lost = 0  # rows left to the spool recovery

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        if self.running:
            return
        self._thread = threading.Thread(target=self._run, name="instance-writer", daemon=True)
        self._thread.start()

    def submit(self, item: Received | Ended) -> None:
        self._queue.put(item)

    def flush(self, timeout: float | None = 60.0) -> bool:
        """Wait until everything submitted before is written; False on timeout, while rows are
        held for a failing database, or when the writer is not running."""
        if not self.running:
            return False
        done = threading.Event()
        self._queue.put(done)
        return done.wait(timeout) and not self._held

    def stop(self, timeout: float | None = 120.0) -> None:
        """Write everything queued, then end the thread."""
        thread = self._thread
        if thread is None:
            return
        self._queue.put(_STOP)
        thread.join(timeout)
        if thread.is_alive():
            log.error("instance writer still busy after %s s; the spool keeps its rows", timeout)
        self._thread = None

    def _run(self) -> None:
        stopping = False
        while not stopping:
            try:
                items = [self._queue.get(timeout=self.hold_s if self._held else None)]
            except queue.Empty:
                items = []
            deadline = time.monotonic() + self.linger_s
            while items and len(items) < self.max_group and isinstance(items[-1], Received):
                try:
                    items.append(self._queue.get(timeout=max(0.0, deadline - time.monotonic())))
                except queue.Empty:
                    break
            stopping = any(item is _STOP for item in items)
            work = self._held + [i for i in items if isinstance(i, Received | Ended)]
            self._held = []
            try:
                self._write_in_order(work, last_try=stopping)
            except Exception:  # noqa: BLE001 - the thread must outlive any one group
                log.exception("instance writer: %d item(s) left to the spool recovery", len(work))
                self.lost += sum(isinstance(i, Received) for i in work)
            for item in items:
                if isinstance(item, threading.Event):
                    item.set()

    def _write_in_order(self, work: Sequence[Received | Ended], last_try: bool) -> None:
        """Rows in groups, each end after the rows before it; from the first item the database
        would not take, everything is held, in order, for the next try."""
        group: list[Received] = []
        for k, item in enumerate(work):
            if isinstance(item, Received):
                group.append(item)
                continue
            if group and not self.write(group):
                self._hold(list(work[k:]), last_try)
                return
            group = []
            try:
                self.store.association_ended(list(item.study_uids), item.clean, item.at)
            except SQLAlchemyError as exc:
                log.warning("instance writer: association end not recorded yet (%s)", exc)
                self._hold(list(work[k:]), last_try)
                return
            item.then()
        if group and not self.write(group):
            self._hold([], last_try)
            return
        self.failing = False

    def _hold(self, rest: list[Received | Ended], last_try: bool) -> None:
        self._held.extend(rest)
        self.failing = True
        if last_try:
            rows = sum(isinstance(i, Received) for i in self._held)
            log.error(
                "instance writer stopping with %d row(s) the database did not take: the spool "
                "keeps them and the next start records them",
                rows,
            )
            self.lost += rows
            self._held = []

    def write(self, group: Sequence[Received]) -> bool:
        """Record ``group`` in one transaction, retrying a failing database; then row by row,
        so that one refused row costs only itself. False when the database took none of it:
        the rows are then held (in :attr:`_held`, before anything queued later)."""
        if not group:
            return True
        for delay in (*self.retry_delays_s, None):
            try:
                self.store.record_instances(group)
                self.groups += 1
                return True
            except GroupRefused as exc:
                log.warning("instance writer: %s; recording the group row by row", exc)
                break
            except SQLAlchemyError as exc:
                if delay is None:
                    break
                log.warning(
                    "instance writer: %d row(s) not written (%s); again in %g s",
                    len(group),
                    type(exc).__name__,
                    delay,
                )
                time.sleep(delay)
        unwritten = [item for item in group if not self.write_one(item)]
        if unwritten and len(unwritten) == len(group):
            self._held.extend(unwritten)
            log.error(
                "instance writer: the database takes no row (%d held); reception answers "
                "0xA700 until it does",
                len(unwritten),
            )
            return False
        self.lost += len(unwritten)
        for item in unwritten:
            log.error(
                "instance writer: instance %s not recorded; the spool keeps its file",
                item.rec.sop_instance_uid,
            )
        return True

    def write_one(self, item: Received, raising: bool = False) -> bool:
        """Record one instance as :meth:`Store.record_instance` does; with ``raising`` its
        UidConflict or database error is raised. True when written or refused for a UID
        conflict (logged: the spool keeps the file), False on a database error."""
        try:
            self.store.record_instance(
                item.rec,
                calling_ae=item.calling_ae,
                called_ae=item.called_ae,
                now=item.received_at,
                opens_association=item.opens_association,
            )
        except UidConflict as exc:
            if raising:
                raise
            self.lost += 1
            # Admission refuses conflicts before the acknowledgement: a conflict here comes
            # from another process's rows, and the file stays in the spool, unrecorded.
            log.error(
                "instance writer: instance %s not recorded (%s); the spool keeps its file",
                item.rec.sop_instance_uid,
                exc,
            )
        except SQLAlchemyError:
            if raising:
                raise
            return False
        return True
