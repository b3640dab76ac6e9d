"""Admission: may a received instance be stored? Study limits and UID checks from memory.

Per study this process keeps the instances it knows (SOP Instance UID -> series, bytes), seeded
from the database the first time the study is seen, and updated as instances are admitted, so
the limits (``limits.max_instances_per_study``, ``limits.max_bytes_per_study``) cost no
database round trip. A UID this process has not seen is looked up once by primary key: a SOP
Instance UID or Series Instance UID recorded for another study or series is refused
(:class:`UidConflict`, 0xC211) before anything is stored. What is admitted counts at once,
before its row is written (rows are written behind the acknowledgement), so two associations
cannot both pass a limit or both claim one UID for two studies.

A study is forgotten when no association of this process sends it any more and its rows are
written (the receiver flushes its writer first): the database then holds what memory held.
Several receiving processes on one database each check against what the database holds; the
recording transaction still refuses a conflicting row (its instance is then not recorded).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass, field

from gateway.config import LimitsConfig
from gateway.db.database import Store
from gateway.db.records import InstanceRecord
from gateway.errors import OutOfResources, UidConflict


@dataclass
class _Study:
    instances: dict[str, tuple[str, int]]  # SOP Instance UID -> (Series Instance UID, bytes)
    size: int
    senders: int = 0  # associations of this process sending the study now
    series: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class Ticket:
    """An admitted instance: what :meth:`Admission.release` needs to undo it."""

    rec: InstanceRecord
    previous: tuple[str, int] | None  # the entry it replaced (a resend), None when new
    opened: bool


class Admission:
    """Study limits and UID conflicts for one receiving process (thread-safe)."""

    def __init__(self, store: Store, limits: LimitsConfig):
        self.store = store
        self.limits = limits
        self._studies: dict[str, _Study] = {}
        self._sop_study: dict[str, str] = {}  # every SOP Instance UID of the studies in memory
        self._series_study: dict[str, str] = {}
        self._lock = threading.Lock()

    def admit(self, rec: InstanceRecord, size: int, opens: bool = False) -> Ticket:
        """Count ``rec`` (``size`` bytes) against its study; ``opens``: the first instance of the
        study in its association. A resend of a known instance takes no new quota.

        Raises UidConflict or OutOfResources, counting nothing; a study first seen in this call
        and sent by no association is forgotten again (memory holds studies being received)."""
        with self._lock:
            fresh = rec.study_uid not in self._studies
        try:
            return self._admit(rec, size, opens)
        except BaseException:
            with self._lock:
                st = self._studies.get(rec.study_uid)
                if st is not None and (fresh or not st.instances):
                    self._forget_if_idle(rec.study_uid)
            raise

    def _admit(self, rec: InstanceRecord, size: int, opens: bool) -> Ticket:
        holders: tuple[str | None, tuple[str, str] | None] | None = None
        looked = False
        while True:
            with self._lock:
                st = self._study(rec.study_uid)
                previous = st.instances.get(rec.sop_instance_uid)
                # Decided from memory, or from the database look-up made just before (memory,
                # which another thread may have changed meanwhile, is checked again with it).
                if previous is not None or looked or self._decided_in_memory(rec):
                    return self._count(rec, st, previous, holders, size, opens)
                series_known = self._series_study.get(rec.series_uid) is not None
            # One primary-key look-up (two for a series new to this process), outside the lock.
            series = None if series_known else rec.series_uid
            holders = self.store.uid_holders(series, rec.sop_instance_uid)
            looked = True

    def _count(
        self,
        rec: InstanceRecord,
        st: _Study,
        previous: tuple[str, int] | None,
        holders: tuple[str | None, tuple[str, str] | None] | None,
        size: int,
        opens: bool,
    ) -> Ticket:
        if previous is not None:
            if previous[0] != rec.series_uid:
                raise _sop_conflict(rec, rec.study_uid, previous[0])
        else:
            self._check_uids(rec, holders)
            self._check_limits(rec, st, size)
        st.instances[rec.sop_instance_uid] = (rec.series_uid, size)
        st.size += size - (previous[1] if previous else 0)
        st.series.add(rec.series_uid)
        st.senders += 1 if opens else 0
        self._sop_study[rec.sop_instance_uid] = rec.study_uid
        self._series_study[rec.series_uid] = rec.study_uid
        return Ticket(rec, previous, opens)

    def release(self, ticket: Ticket) -> None:
        """Undo an admission whose instance was not stored after all."""
        rec = ticket.rec
        with self._lock:
            st = self._studies.get(rec.study_uid)
            if st is None:
                return
            st.senders -= 1 if ticket.opened else 0
            entry = st.instances.pop(rec.sop_instance_uid, None)
            st.size -= entry[1] if entry else 0
            if ticket.previous is not None:
                st.instances[rec.sop_instance_uid] = ticket.previous
            else:
                self._sop_study.pop(rec.sop_instance_uid, None)
            if not st.instances:
                self._forget_if_idle(rec.study_uid)

    def ended(self, study_uids: Iterable[str]) -> None:
        """An association that opened these studies ended, its rows written: forget each study
        that no other association of this process is sending."""
        with self._lock:
            for uid in study_uids:
                st = self._studies.get(uid)
                if st is None:
                    continue
                st.senders -= 1
                self._forget_if_idle(uid)

    def usage(self, study_uid: str) -> tuple[int, int]:
        """(instances, bytes) of a study as admission counts them."""
        with self._lock:
            st = self._study(study_uid)
            return len(st.instances), st.size

    # -- under the lock ---------------------------------------------------------------------------

    def _forget_if_idle(self, study_uid: str) -> None:
        """Forget a study no association of this process is sending: its rows are written
        (an association's end is recorded behind them), and the next instance seeds it again
        from the database (which a purge or deletion may have changed meanwhile)."""
        st = self._studies.get(study_uid)
        if st is None or st.senders > 0:
            return
        del self._studies[study_uid]
        for sop in st.instances:
            if self._sop_study.get(sop) == study_uid:
                del self._sop_study[sop]
        for series_uid in st.series:
            if self._series_study.get(series_uid) == study_uid:
                del self._series_study[series_uid]

    def _study(self, study_uid: str) -> _Study:
        st = self._studies.get(study_uid)
        if st is None:
            rows = self.store.study_instances(study_uid)
            st = _Study({sop: (se, size) for sop, se, size in rows}, sum(r[2] for r in rows))
            st.series = {se for _, se, _ in rows}
            self._studies[study_uid] = st
            for sop, se, _ in rows:
                self._sop_study.setdefault(sop, study_uid)
                self._series_study.setdefault(se, study_uid)
        return st

    def _decided_in_memory(self, rec: InstanceRecord) -> bool:
        """Whether memory alone says who holds both UIDs (no database look-up needed)."""
        return rec.sop_instance_uid in self._sop_study or (
            self._series_study.get(rec.series_uid) not in (None, rec.study_uid)
        )

    def _check_uids(
        self, rec: InstanceRecord, holders: tuple[str | None, tuple[str, str] | None] | None
    ) -> None:
        owner = self._series_study.get(rec.series_uid)
        if owner is None and holders is not None:
            owner = holders[0]
        if owner is not None and owner != rec.study_uid:
            raise UidConflict(
                "Series Instance UID already belongs to another study",
                f"series {rec.series_uid} of study {rec.study_uid} is recorded in study {owner}",
            )
        other = self._sop_study.get(rec.sop_instance_uid)
        if other is not None and other != rec.study_uid:
            held_by = self._studies.get(other)
            entry = held_by.instances.get(rec.sop_instance_uid) if held_by else None
            raise _sop_conflict(rec, other, entry[0] if entry else "?")
        held = holders[1] if holders is not None else None
        if held is not None and held[0] != rec.series_uid:
            raise _sop_conflict(rec, held[1], held[0])

    def _check_limits(self, rec: InstanceRecord, st: _Study, size: int) -> None:
        if len(st.instances) + 1 > self.limits.max_instances_per_study:
            raise OutOfResources(
                f"study {rec.study_uid} over limits.max_instances_per_study "
                f"({self.limits.max_instances_per_study})"
            )
        if st.size + size > self.limits.max_bytes_per_study:
            raise OutOfResources(
                f"study {rec.study_uid} over limits.max_bytes_per_study "
                f"({self.limits.max_bytes_per_study} bytes)"
            )


def _sop_conflict(rec: InstanceRecord, study_uid: str, series_uid: str) -> UidConflict:
    where = "study" if study_uid != rec.study_uid else "series"
    return UidConflict(
        f"SOP Instance UID already stored in another {where}",
        f"instance {rec.sop_instance_uid} of study {rec.study_uid}, series {rec.series_uid} is "
        f"recorded in study {study_uid}, series {series_uid}",
    )
