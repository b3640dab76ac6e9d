"""Schema migrations: bring the database to the schema of this release with Alembic at start-up.

- a new database: ``upgrade head``;
- a database made by the release before migrations (its tables, no ``alembic_version``): it is
  stamped at revision 0001, that release's schema, then upgraded;
- a database at head: nothing is written.

Two processes may start on one database at once (the receiver and workers). The one that
migrates holds a write lock for the whole migration and the other waits, then finds the database
at head. On SQLite the lock is ``BEGIN IMMEDIATE`` (the others wait up to the busy timeout). That
needs DDL inside the transaction, which pysqlite does not do by itself (it opens transactions only
before DML, so Alembic marks SQLite non-transactional): the migration connection leaves
transactions to us. On PostgreSQL, whose DDL is transactional, a transaction-scoped advisory lock
serialises the migrators.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, create_engine, event, inspect, text
from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool

from gateway.errors import SchemaNotReady

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).with_name("migrations")
PREVIOUS_RELEASE = "0001"  # the schema databases made before migrations have
SQLITE_BUSY_TIMEOUT_MS = 30000
_PG_LOCK_KEY = 0x41495243  # "AIRC": the advisory lock the migrators of one database share


def alembic_config() -> Config:
    cfg = Config()
    # ConfigParser interpolates '%' in option values.
    cfg.set_main_option("script_location", str(MIGRATIONS).replace("%", "%%"))
    return cfg


def head() -> str:
    rev = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert rev is not None
    return rev


def current(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine) -> None:
    """Bring the database behind ``engine`` to head (see the module docstring)."""
    target = head()
    with engine.connect() as conn:
        if current(conn) == target:
            return
    in_memory = engine.dialect.name == "sqlite" and engine.url.database in (None, "", ":memory:")
    # An in-memory database lives in the engine's one connection, and nothing else can race.
    migrator = engine if in_memory else _migration_engine(engine)
    try:
        with migrator.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
            _upgrade_locked(conn, target)
    finally:
        if migrator is not engine:
            migrator.dispose()


def wait_for_head(engine: Engine, timeout_s: float, poll_s: float = 1.0) -> None:
    """Wait until another process (the receiver) has brought the database to this release's
    schema; raise :class:`SchemaNotReady` after ``timeout_s``. Workers never migrate: a worker of
    an older release must not race a newer receiver's migration, nor a newer worker start one."""
    target = head()
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with engine.connect() as conn:
                found = current(conn)
        except Exception as exc:  # noqa: BLE001 - the database server may still be starting
            found = f"unreachable ({type(exc).__name__})"
        if found == target:
            return
        if time.monotonic() >= deadline:
            raise SchemaNotReady(
                f"database schema is {found or 'empty'}, this release needs {target}: start "
                "the receiver (aircon serve --role receiver) of this release first; it migrates"
            )
        log.info("waiting for the receiver to migrate the database (%s -> %s)", found, target)
        time.sleep(poll_s)


def _upgrade_locked(conn: Connection, target: str) -> None:
    found = current(conn)
    if found == target:
        return  # another process migrated while this one waited for the lock
    cfg = alembic_config()
    cfg.attributes["connection"] = conn
    if found is None and inspect(conn).has_table("studies"):
        log.info("database made before schema migrations: taken as revision %s", PREVIOUS_RELEASE)
        command.stamp(cfg, PREVIOUS_RELEASE)
        found = PREVIOUS_RELEASE
    log.info("database schema: upgrading from %s to %s", found or "empty", target)
    command.upgrade(cfg, "head")


def _migration_engine(engine: Engine) -> Engine:
    migrator = create_engine(engine.url, poolclass=NullPool)
    if migrator.dialect.name == "sqlite":
        event.listen(migrator, "connect", _sqlite_migration_pragmas)
        event.listen(migrator, "begin", _sqlite_begin_immediate)
    return migrator


def _sqlite_migration_pragmas(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.isolation_level = None  # transactions are begun by _sqlite_begin_immediate only
    cur = dbapi_conn.cursor()
    cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    sqlite_wal(cur)
    # A batch-mode table copy drops the old table; with foreign keys on, that drop would delete
    # (or refuse for) the rows that reference it. The pragma has no effect inside a transaction.
    cur.execute("PRAGMA foreign_keys=OFF")
    cur.close()


def _sqlite_begin_immediate(conn: Connection) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def sqlite_wal(cur: Any) -> None:
    """Switch the database file to WAL (kept in the file: once is enough). The switch needs an
    exclusive lock and SQLite may answer "locked" at once instead of calling the busy handler
    while another process starts on the same file (e.g. migrating it): try again for a while."""
    import sqlite3

    if str(cur.execute("PRAGMA journal_mode").fetchone()[0]).lower() == "wal":
        return
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)
