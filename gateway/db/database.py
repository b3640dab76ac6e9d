"""The database: studies, series, instances, jobs and deliveries (SQLAlchemy 2).

SQLite is the embedded default (WAL, synchronous NORMAL, busy timeout); the URL comes from config so
PostgreSQL can follow. Rows hold UIDs, geometry and series descriptions, never patient names or IDs.
"""

from __future__ import annotations

import functools
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import (
    create_engine,
    event,
    func,
    select,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from gateway.db import migrate
from gateway.db.audit import AuditQueries
from gateway.db.cancel import CancelQueries
from gateway.db.console import AuditSearchQueries, ConsoleQueries
from gateway.db.deliveries import DeliveryQueries
from gateway.db.operations import OperationsQueries
from gateway.db.qa import QaQueries
from gateway.db.reception import ReceptionQueries
from gateway.db.records import (
    InstanceRecord,
)
from gateway.db.register import RegisterQueries
from gateway.db.selftests import SelfTestQueries
from gateway.db.studies import StudyQueries
from gateway.db.tables import (
    InstanceRow,
    SeriesRow,
    SettingRow,
    StudyRow,
)
from gateway.db.work import WorkQueries
from gateway.errors import UidConflict


class Store(
    StudyQueries,
    ReceptionQueries,
    WorkQueries,
    CancelQueries,
    DeliveryQueries,
    AuditQueries,
    QaQueries,
    RegisterQueries,
    OperationsQueries,
    ConsoleQueries,
    AuditSearchQueries,
    SelfTestQueries,
):
    """All database access of the gateway."""

    def __init__(self, url: str, *, migrate_wait_s: float | None = None):
        """Open the database and bring it to this release's schema; with ``migrate_wait_s``
        (an ``aircon worker``) do not migrate but wait that long for another process to."""
        # A database server may restart under a long-running process: test pooled connections.
        pre_ping = not url.startswith("sqlite")
        self.engine: Engine = create_engine(url, future=True, pool_pre_ping=pre_ping)
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        if migrate_wait_s is None:
            migrate.upgrade(self.engine)
        else:
            migrate.wait_for_head(self.engine, migrate_wait_s)
        self._session = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._session.begin() as s:
            yield s

    def _insert(self, table: Any) -> Any:
        if self.engine.dialect.name == "postgresql":
            from sqlalchemy.dialects import postgresql

            return postgresql.insert(table)
        from sqlalchemy.dialects import sqlite

        return sqlite.insert(table)

    # -- reception -------------------------------------------------------------------------------

    def record_instance(
        self,
        rec: InstanceRecord,
        calling_ae: str,
        called_ae: str,
        now: float | None = None,
        opens_association: bool = False,
    ) -> None:
        """Record (or re-record, on a resend) one received instance and touch its series/study.
        ``opens_association``: the first instance of this study in an association, which counts
        as sending the study until :meth:`association_ended`.

        Raises :class:`UidConflict`, recording nothing, when the instance's SOP Instance UID is
        recorded in another series or study or its Series Instance UID in another study: another
        study's rows are never rewritten or joined.
        """
        now = time.time() if now is None else now
        opened = 1 if opens_association else 0
        with self.session() as s:
            # The study upsert comes first: on SQLite it takes the write lock, so the check at
            # the end reads rows no other writer can change before this transaction commits.
            ins = self._insert(StudyRow).values(
                study_uid=rec.study_uid,
                calling_ae=calling_ae,
                called_ae=called_ae,
                first_received_at=now,
                last_received_at=now,
                open_associations=opened,
                reason="",
            )
            s.execute(
                ins.on_conflict_do_update(
                    index_elements=["study_uid"],
                    set_={"last_received_at": now}
                    | ({"open_associations": StudyRow.open_associations + 1} if opened else {})
                    | ({"calling_ae": calling_ae, "called_ae": called_ae} if calling_ae else {}),
                )
            )
            ins = self._insert(SeriesRow).values(
                series_uid=rec.series_uid,
                study_uid=rec.study_uid,
                attributes=rec.series_attributes,
                first_received_at=now,
                last_received_at=now,
                patient_key=rec.patient_key or None,
            )
            series_done = s.execute(
                ins.on_conflict_do_update(
                    index_elements=["series_uid"],
                    set_={
                        "last_received_at": now,
                        "patient_key": func.coalesce(
                            SeriesRow.patient_key, rec.patient_key or None
                        ),
                    },
                    where=SeriesRow.study_uid == rec.study_uid,
                ).returning(SeriesRow.series_uid)
            ).first()
            ins = self._insert(InstanceRow).values(
                sop_instance_uid=rec.sop_instance_uid,
                series_uid=rec.series_uid,
                sop_class_uid=rec.sop_class_uid,
                path=rec.path,
                received_at=now,
                geometry=rec.geometry,
                size=rec.size,
            )
            instance_done = s.execute(
                ins.on_conflict_do_update(
                    index_elements=["sop_instance_uid"],
                    set_={
                        "received_at": now,
                        "path": rec.path,
                        "geometry": rec.geometry,
                        "size": rec.size,
                    },
                    where=InstanceRow.series_uid == rec.series_uid,
                ).returning(InstanceRow.sop_instance_uid)
            ).first()
            # An upsert whose WHERE refused (the row belongs to another study or series)
            # returns no row: only then is the conflict looked up, to say which. (RETURNING, not
            # rowcount: psycopg reports -1 for an INSERT .. ON CONFLICT through SQLAlchemy.)
            if series_done is None or instance_done is None:
                conflict = _uid_conflict(s, rec)
                if conflict is not None:
                    raise conflict  # rolls back this transaction: nothing of it is recorded

    @functools.cached_property
    def patient_salt(self) -> str:
        """This installation's salt for patient keys: made once, kept in the database."""
        return self.installation_secret("patient_salt")

    def installation_secret(self, key: str) -> str:
        """A random per-installation value (256 bits, hex) made once and kept in the database,
        e.g. the patient-key salt or the console's cookie-signing key."""
        with self.session() as s:
            s.execute(
                self._insert(SettingRow)
                .values(key=key, value=secrets.token_hex(32))
                .on_conflict_do_nothing(index_elements=["key"])
            )
            return str(s.scalar(select(SettingRow.value).where(SettingRow.key == key)))

    def study_usage(self, study_uid: str) -> tuple[int, int]:
        """(instances, bytes) received so far for a study."""
        with self.session() as s:
            count, size = s.execute(_usage(study_uid)).one()
            return int(count), int(size)

    def known_instances(self) -> set[str]:
        with self.session() as s:
            return set(s.scalars(select(InstanceRow.sop_instance_uid)))


def _usage(study_uid: str) -> Any:
    return (
        select(
            func.count(InstanceRow.sop_instance_uid),
            func.coalesce(func.sum(InstanceRow.size), 0),
        )
        .join(SeriesRow, SeriesRow.series_uid == InstanceRow.series_uid)
        .where(SeriesRow.study_uid == study_uid)
    )


def _uid_conflict(s: Session, rec: InstanceRecord) -> UidConflict | None:
    owner = s.scalar(select(SeriesRow.study_uid).where(SeriesRow.series_uid == rec.series_uid))
    if owner is not None and owner != rec.study_uid:
        return UidConflict(
            "Series Instance UID already belongs to another study",
            f"series {rec.series_uid} of study {rec.study_uid} is recorded in study {owner}",
        )
    held = s.execute(
        select(InstanceRow.series_uid, SeriesRow.study_uid)
        .join(SeriesRow, SeriesRow.series_uid == InstanceRow.series_uid)
        .where(InstanceRow.sop_instance_uid == rec.sop_instance_uid)
    ).first()
    if held is None or held.series_uid == rec.series_uid:
        return None
    where = "study" if held.study_uid != rec.study_uid else "series"
    return UidConflict(
        f"SOP Instance UID already stored in another {where}",
        f"instance {rec.sop_instance_uid} of study {rec.study_uid}, series {rec.series_uid} is "
        f"recorded in study {held.study_uid}, series {held.series_uid}",
    )


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    # First, so that switching to WAL, which needs a lock, waits for a concurrent start too.
    cur.execute(f"PRAGMA busy_timeout={migrate.SQLITE_BUSY_TIMEOUT_MS}")
    migrate.sqlite_wal(cur)
    # NORMAL: a commit survives a process crash; on power loss the last rows may roll back, and
    # gateway.receive.recovery re-records them from the spool, which is fsynced per instance.
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()
