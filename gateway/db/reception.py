"""Reception's database side: many received instances recorded in one transaction, and the
cheap look-ups reception's admission needs (a study's instances, who holds a UID).

The per-instance :meth:`Store.record_instance` stays the reference (and the start-up recovery's
path); :meth:`ReceptionQueries.record_instances` writes the same rows for a group of instances
with one Core ``executemany`` upsert per table.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, case, func, select
from sqlalchemy.engine import Engine

from gateway.db.records import InstanceRecord
from gateway.db.tables import InstanceRow, SeriesRow, StudyRow

_studies, _series, _instances = StudyRow.__table__, SeriesRow.__table__, InstanceRow.__table__

# Built once: building a statement costs more than running it on SQLite.
_STUDY_INSTANCES = (
    select(_instances.c.sop_instance_uid, _instances.c.series_uid, _instances.c.size)
    .join(_series, _series.c.series_uid == _instances.c.series_uid)
    .where(_series.c.study_uid == bindparam("study_uid"))
)
_INSTANCE_HOLDER = (
    select(_instances.c.series_uid, _series.c.study_uid)
    .join(_series, _series.c.series_uid == _instances.c.series_uid)
    .where(_instances.c.sop_instance_uid == bindparam("sop"))
)
_SERIES_OWNER = select(_series.c.study_uid).where(_series.c.series_uid == bindparam("series"))


@dataclass(frozen=True)
class Received:
    """One instance to record: what :meth:`Store.record_instance` takes, with its arrival time."""

    rec: InstanceRecord
    calling_ae: str
    called_ae: str
    received_at: float
    opens_association: bool = False


class GroupRefused(Exception):
    """A row of the group belongs to another study or series (the upsert's guard refused it):
    nothing of the group was written; record its instances one by one to find which."""


class ReceptionQueries:
    """Reception queries of :class:`gateway.db.database.Store` (a mixin)."""

    engine: Engine
    _insert: Callable[[Any], Any]

    def record_instances(self, group: Sequence[Received]) -> None:
        """Record a group of received instances in one transaction, as :meth:`record_instance`
        would one by one (a later copy of the same instance wins).

        Raises :class:`GroupRefused`, writing nothing, when a series or instance is recorded in
        another study or series."""
        if not group:
            return
        studies: dict[str, dict[str, Any]] = {}
        series: dict[str, dict[str, Any]] = {}
        instances: dict[str, dict[str, Any]] = {}
        for item in group:
            rec, now = item.rec, item.received_at
            st = studies.setdefault(
                rec.study_uid,
                {"study_uid": rec.study_uid, "first_received_at": now, "open_associations": 0},
            )
            st.update(calling_ae=item.calling_ae, called_ae=item.called_ae, last_received_at=now)
            st["first_received_at"] = min(st["first_received_at"], now)
            st["open_associations"] += 1 if item.opens_association else 0
            se = series.setdefault(
                rec.series_uid,
                {
                    "series_uid": rec.series_uid,
                    "study_uid": rec.study_uid,
                    "attributes": rec.series_attributes,
                    "first_received_at": now,
                    "patient_key": rec.patient_key or None,
                },
            )
            se["last_received_at"] = now
            instances[rec.sop_instance_uid] = {
                "sop_instance_uid": rec.sop_instance_uid,
                "series_uid": rec.series_uid,
                "sop_class_uid": rec.sop_class_uid,
                "path": rec.path,
                "received_at": now,
                "geometry": rec.geometry,
                "size": rec.size,
            }
        for st in studies.values():
            st["reason"] = ""
        study_upsert, series_upsert, instance_upsert = self._upserts
        with self.engine.begin() as conn:
            # Studies first: on SQLite that takes the write lock for the whole group.
            # In key order: two transactions locking the same rows take them in the same order
            # (PostgreSQL row locks), so they never deadlock each other.
            conn.execute(study_upsert, [studies[k] for k in sorted(studies)])
            # Rows an upsert's WHERE refused are not returned. (RETURNING, not rowcount: psycopg
            # reports -1 for an INSERT .. ON CONFLICT through SQLAlchemy.)
            done = len(conn.execute(series_upsert, [series[k] for k in sorted(series)]).all())
            if done != len(series):
                raise GroupRefused(f"{len(series) - done} series held by another study")
            rows = [instances[k] for k in sorted(instances)]
            done = len(conn.execute(instance_upsert, rows).all())
            if done != len(instances):
                raise GroupRefused(f"{len(instances) - done} instance(s) held elsewhere")

    def open_reception(self, item: Received) -> None:
        """An association sends its first instance of a study: the study (made if new) counts
        one more association sending it, at once (the instance's row follows)."""
        now = item.received_at
        row = {
            "study_uid": item.rec.study_uid,
            "calling_ae": item.calling_ae,
            "called_ae": item.called_ae,
            "first_received_at": now,
            "last_received_at": now,
            "open_associations": 1,
            "reason": "",
        }
        with self.engine.begin() as conn:
            conn.execute(self._upserts[0], [row])

    @functools.cached_property
    def _upserts(self) -> tuple[Any, Any, Any]:
        return self._study_upsert(), self._series_upsert(), self._instance_upsert()

    def _study_upsert(self) -> Any:
        ins = self._insert(_studies)
        new = ins.excluded
        return ins.on_conflict_do_update(
            index_elements=["study_uid"],
            set_={
                "last_received_at": new.last_received_at,
                "open_associations": _studies.c.open_associations + new.open_associations,
                "calling_ae": case(
                    (new.calling_ae != "", new.calling_ae), else_=_studies.c.calling_ae
                ),
                "called_ae": case(
                    (new.calling_ae != "", new.called_ae), else_=_studies.c.called_ae
                ),
            },
        )

    def _series_upsert(self) -> Any:
        ins = self._insert(_series)
        new = ins.excluded
        return ins.on_conflict_do_update(
            index_elements=["series_uid"],
            set_={
                "last_received_at": new.last_received_at,
                "patient_key": func.coalesce(_series.c.patient_key, new.patient_key),
            },
            where=_series.c.study_uid == new.study_uid,
        ).returning(_series.c.series_uid)

    def _instance_upsert(self) -> Any:
        ins = self._insert(_instances)
        new = ins.excluded
        return ins.on_conflict_do_update(
            index_elements=["sop_instance_uid"],
            set_={
                "received_at": new.received_at,
                "path": new.path,
                "geometry": new.geometry,
                "size": new.size,
            },
            where=_instances.c.series_uid == new.series_uid,
        ).returning(_instances.c.sop_instance_uid)

    def study_instances(self, study_uid: str) -> list[tuple[str, str, int]]:
        """(SOP Instance UID, Series Instance UID, bytes) of every instance of a study."""
        with self.engine.connect() as conn:
            rows = conn.execute(_STUDY_INSTANCES, {"study_uid": study_uid})
            return [(sop, se, int(size or 0)) for sop, se, size in rows]

    def uid_holders(
        self, series_uid: str | None, sop_instance_uid: str
    ) -> tuple[str | None, tuple[str, str] | None]:
        """Who holds these UIDs: the study of the series (None when unknown or not asked),
        and the (series, study) of the instance (or None). Primary-key look-ups."""
        with self.engine.connect() as conn:
            study = None
            if series_uid is not None:
                study = conn.execute(_SERIES_OWNER, {"series": series_uid}).scalar()
            row = conn.execute(_INSTANCE_HOLDER, {"sop": sop_instance_uid}).first()
        return study, (None if row is None else (str(row[0]), str(row[1])))
