"""The instance writer: received instances' rows written behind the acknowledgement.

The Storage SCP answers success once the instance file is durable in the spool (fsynced); its
row is queued here, and one background thread writes what has queued up in one transaction
(group commit). The spool is the durable record: a row lost to a crash, or one the database
would not take after the retries, is written by ``Receiver.recover_spool`` at the next start.

``flush()`` waits until every row queued before it is written: the receiver flushes before it
records an association's end, so a study check never sees a finished association whose
instances are missing. ``stop()`` writes everything queued, then ends the thread.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Sequence

from sqlalchemy.exc import SQLAlchemyError

from gateway.db.database import Store
from gateway.db.reception import GroupRefused, Received
from gateway.errors import UidConflict

log = logging.getLogger(__name__)

_STOP = object()
RETRY_DELAYS_S = (0.05, 0.2, 0.5, 1.0, 2.0, 5.0)  # then each row alone, once


class InstanceWriter:
    """One thread that records queued instances in groups of at most ``max_group``."""

    def __init__(
        self,
        store: Store,
        *,
        max_group: int = 500,
        linger_s: float = 0.02,
        retry_delays_s: Sequence[float] = RETRY_DELAYS_S,
    ):
        self.store = store
        self.max_group = max_group
        # Waiting a little after the first row collects a bigger group: fewer transactions,
        # less CPU per row. No acknowledgement waits for it; a flush or stop cuts it short.
        self.linger_s = linger_s
        self.retry_delays_s = tuple(retry_delays_s)
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
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

    def submit(self, item: Received) -> None:
        self._queue.put(item)

    def flush(self, timeout: float | None = 60.0) -> bool:
        """Wait until everything submitted before is written (or given up); False on timeout
        or when the writer is not running."""
        if not self.running:
            return False
        done = threading.Event()
        self._queue.put(done)
        return done.wait(timeout)

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
            items = [self._queue.get()]
            deadline = time.monotonic() + self.linger_s
            while len(items) < self.max_group and isinstance(items[-1], Received):
                try:
                    items.append(self._queue.get(timeout=max(0.0, deadline - time.monotonic())))
                except queue.Empty:
                    break
            group = [i for i in items if isinstance(i, Received)]
            try:
                self.write(group)
            except Exception:  # noqa: BLE001 - the thread must outlive any one group
                log.exception("instance writer: %d row(s) left to the spool recovery", len(group))
                self.lost += len(group)
            for item in items:
                if isinstance(item, threading.Event):
                    item.set()
                stopping = stopping or item is _STOP

    def write(self, group: Sequence[Received]) -> None:
        """Record ``group`` in one transaction, retrying a failing database; then row by row,
        so that one refused or unwritable row costs only itself."""
        if not group:
            return
        for delay in (*self.retry_delays_s, None):
            try:
                self.store.record_instances(group)
                self.groups += 1
                return
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
        for item in group:
            self.write_one(item)

    def write_one(self, item: Received, raising: bool = False) -> None:
        """Record one instance as :meth:`Store.record_instance` does; with ``raising`` its
        UidConflict or database error is raised, else logged (the spool keeps the file)."""
        try:
            self.store.record_instance(
                item.rec,
                calling_ae=item.calling_ae,
                called_ae=item.called_ae,
                now=item.received_at,
                opens_association=item.opens_association,
            )
        except (UidConflict, SQLAlchemyError) as exc:
            if raising:
                raise
            self.lost += 1
            # Admission refuses conflicts before the acknowledgement: a conflict here comes
            # from another process's rows, and the file stays in the spool, unrecorded.
            log.error(
                "instance writer: instance %s not recorded (%s); the spool keeps its file",
                item.rec.sop_instance_uid,
                exc if isinstance(exc, UidConflict) else type(exc).__name__,
            )
