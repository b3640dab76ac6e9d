"""Schema migrations: a database of the previous release keeps its rows, and the migrations and
``Base.metadata`` describe the same schema."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect, select

from gateway.db import migrate
from gateway.db.database import Store
from gateway.db.records import DeliveryState, JobState
from gateway.db.tables import Base

REPO = Path(__file__).resolve().parents[2]

# The previous release's schema (gateway/store.py at cc3c090), as its create_all wrote it on
# SQLite: dumped from sqlite_master of a database that release made.
PREVIOUS_RELEASE_DDL = """
CREATE TABLE studies (
    study_uid VARCHAR(64) NOT NULL,
    calling_ae VARCHAR(16) NOT NULL,
    called_ae VARCHAR(16) NOT NULL,
    first_received_at FLOAT NOT NULL,
    last_received_at FLOAT NOT NULL,
    released_at FLOAT,
    interrupted_at FLOAT,
    PRIMARY KEY (study_uid)
);
CREATE TABLE jobs (
    id INTEGER NOT NULL,
    study_uid VARCHAR(64) NOT NULL,
    rule VARCHAR(64) NOT NULL,
    model VARCHAR(255) NOT NULL,
    state VARCHAR(16) NOT NULL,
    reason TEXT NOT NULL,
    input_series JSON NOT NULL,
    rtstruct_uid VARCHAR(64),
    rtstruct_path TEXT,
    created_at FLOAT NOT NULL,
    stages JSON NOT NULL,
    results JSON NOT NULL,
    PRIMARY KEY (id)
);
CREATE INDEX ix_jobs_state ON jobs (state);
CREATE INDEX ix_jobs_study_uid ON jobs (study_uid);
CREATE TABLE audit (
    id INTEGER NOT NULL,
    at FLOAT NOT NULL,
    event VARCHAR(32) NOT NULL,
    outcome VARCHAR(32) NOT NULL,
    calling_ae VARCHAR(16) NOT NULL,
    address VARCHAR(64) NOT NULL,
    study_uid VARCHAR(64) NOT NULL,
    series_uid VARCHAR(64) NOT NULL,
    instances INTEGER NOT NULL,
    job_id INTEGER,
    model VARCHAR(255) NOT NULL,
    destination VARCHAR(64) NOT NULL,
    detail TEXT NOT NULL,
    PRIMARY KEY (id)
);
CREATE INDEX ix_audit_at ON audit (at);
CREATE TABLE series (
    series_uid VARCHAR(64) NOT NULL,
    study_uid VARCHAR(64) NOT NULL,
    attributes JSON NOT NULL,
    first_received_at FLOAT NOT NULL,
    last_received_at FLOAT NOT NULL,
    PRIMARY KEY (series_uid),
    FOREIGN KEY(study_uid) REFERENCES studies (study_uid)
);
CREATE INDEX ix_series_study_uid ON series (study_uid);
CREATE TABLE deliveries (
    id INTEGER NOT NULL,
    job_id INTEGER NOT NULL,
    destination VARCHAR(64) NOT NULL,
    state VARCHAR(16) NOT NULL,
    attempts INTEGER NOT NULL,
    next_attempt_at FLOAT NOT NULL,
    last_status TEXT NOT NULL,
    delivered_at FLOAT,
    PRIMARY KEY (id),
    FOREIGN KEY(job_id) REFERENCES jobs (id)
);
CREATE INDEX ix_deliveries_job_id ON deliveries (job_id);
CREATE INDEX ix_deliveries_state ON deliveries (state);
CREATE TABLE instances (
    sop_instance_uid VARCHAR(64) NOT NULL,
    series_uid VARCHAR(64) NOT NULL,
    sop_class_uid VARCHAR(64) NOT NULL,
    path TEXT NOT NULL,
    received_at FLOAT NOT NULL,
    geometry JSON NOT NULL,
    size INTEGER NOT NULL,
    PRIMARY KEY (sop_instance_uid),
    FOREIGN KEY(series_uid) REFERENCES series (series_uid)
);
CREATE INDEX ix_instances_series_uid ON instances (series_uid);
"""

GEOMETRY = {
    "FrameOfReferenceUID": "1.2.9",
    "ImagePositionPatient": [0.0, 0.0, 2.5],
    "ImageOrientationPatient": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
    "PixelSpacing": [0.5, 0.5],
    "Rows": 384,
    "Columns": 384,
}

PREVIOUS_RELEASE_ROWS = [
    "INSERT INTO studies VALUES ('1.2.3', 'SCANNER', 'AIRCON', 100.0, 110.0, 111.0, NULL)",
    "INSERT INTO series VALUES ('1.2.3.4', '1.2.3', "
    '\'{"Modality": "MR", "SeriesDescription": "t2_tse_tra"}\', 100.0, 110.0)',
    "INSERT INTO instances VALUES ('1.2.3.4.5', '1.2.3.4', '1.2.840.10008.5.1.4.1.1.4', "
    f"'/spool/1.2.3.4.5.dcm', 105.0, '{__import__('json').dumps(GEOMETRY)}', 294912)",
    "INSERT INTO jobs VALUES (1, '1.2.3', 'prostate', 'prostate_t2', 'done', 'delivered', "
    "'[\"1.2.3.4\"]', '1.2.3.99', '/out/rs.dcm', 120.0, "
    '\'{"created": 120.0, "inference": 130.5}\', \'{"structures": ["Prostate"], "dice": 0.9}\')',
    "INSERT INTO deliveries VALUES (1, 1, 'tps', 'delivered', 2, 0.0, '0x0000', 140.0)",
    "INSERT INTO audit VALUES (1, 150.0, 'delivery', 'ok', '', '10.0.0.7', '1.2.3', '', 0, 1, "
    "'prostate_t2 1.0', 'tps', 'sent')",
]


@pytest.fixture
def previous_release_db(tmp_path: Path) -> str:
    """A database as the previous release left it, with a row in every table."""
    path = tmp_path / "previous.db"
    con = sqlite3.connect(path)
    con.executescript(PREVIOUS_RELEASE_DDL)
    for row in PREVIOUS_RELEASE_ROWS:
        con.execute(row)
    con.commit()
    con.close()
    return f"sqlite:///{path}"


def _revision(url: str) -> str | None:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def _schema_differences(url: str) -> list[Any]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return compare_metadata(MigrationContext.configure(conn), Base.metadata)
    finally:
        engine.dispose()


def test_a_previous_release_database_is_upgraded_and_keeps_its_rows(
    previous_release_db: str,
) -> None:
    store = Store(previous_release_db)
    assert _revision(previous_release_db) == migrate.head()

    study = store.study("1.2.3")
    assert study is not None and study.calling_ae == "SCANNER"
    assert study.interrupted_at is None
    (series,) = study.series
    assert series.attributes["SeriesDescription"] == "t2_tse_tra"
    (slice_,) = series.slices
    assert slice_.position == (0.0, 0.0, 2.5) and slice_.pixel_spacing == (0.5, 0.5)
    assert series.paths == {"1.2.3.4.5": "/spool/1.2.3.4.5.dcm"}
    assert store.study_usage("1.2.3") == (1, 294912)
    job = store.job(1)
    assert job is not None and job.state == JobState.DONE.value
    assert job.input_series == ["1.2.3.4"]
    assert job.stages == {"created": 120.0, "inference": 130.5}
    assert job.models == ["prostate_t2"]  # the comma-separated model list, now a list
    assert job.job_plan.runnable == {"prostate_t2": ("1.2.3.4",)}
    assert job.job_outcome.rois == ()
    (delivery,) = store.deliveries_for(1)
    assert delivery.state == DeliveryState.DELIVERED.value and delivery.delivered_at == 140.0
    (audit,) = store.audit_rows()
    assert audit["event"] == "delivery" and audit["job_id"] == 1 and audit["destination"] == "tps"

    # The migrated database takes new rows next to the old ones.
    assert store.create_job("1.2.3", "prostate", ["prostate_t2"], now=200.0).id == 2


def test_columns_added_since_the_previous_release_read_their_defaults(
    previous_release_db: str,
) -> None:
    """A column this release adds holds its default in the rows that were already there."""
    store = Store(previous_release_db)
    old = sqlite3.connect(":memory:")
    old.executescript(PREVIOUS_RELEASE_DDL)
    with store.engine.connect() as conn:
        for table in Base.metadata.sorted_tables:
            had = {r[1] for r in old.execute(f"PRAGMA table_info({table.name})")}
            # Converted from the old columns, not defaulted (see the test above).
            converted = {"models", "plan", "outcome"} if table.name == "jobs" else set()
            added = [c for c in table.columns if c.name not in had | converted]
            if not had or not added:
                continue  # a new table has no old rows
            row = conn.execute(select(*added)).one()
            for column, value in zip(added, row, strict=True):
                default = column.default.arg if column.default is not None else None
                expected = default(None) if callable(default) else default
                assert value == expected, f"{table.name}.{column.name} of an old row"


@pytest.mark.parametrize("start", ["new", "previous release"])
def test_the_migrated_schema_is_base_metadata(
    start: str, tmp_path: Path, previous_release_db: str
) -> None:
    """Fails when a column, table or index is added to database.py without a migration."""
    url = previous_release_db if start == "previous release" else f"sqlite:///{tmp_path / 'n.db'}"
    Store(url)
    assert _schema_differences(url) == []


def test_a_new_database_is_at_head_and_opening_it_again_migrates_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 'aircon.db'}"
    Store(url)
    assert _revision(url) == migrate.head()
    tables = set(inspect(create_engine(url)).get_table_names())
    assert tables == set(Base.metadata.tables) | {"alembic_version"}

    def no_migration(*_args: Any) -> Any:
        raise AssertionError("a database at head was migrated again")

    monkeypatch.setattr(migrate, "_upgrade_locked", no_migration)
    Store(url).audit("association", "ok")


def test_an_in_memory_database_is_migrated() -> None:
    store = Store("sqlite://")
    store.audit("association", "ok")
    assert len(store.audit_rows()) == 1


_START = """
import sys, time
from pathlib import Path
from gateway.db.database import Store
ready, go, url = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
ready.touch()
while not go.exists():
    time.sleep(0.005)
Store(url).audit("start", "ok")
"""


@pytest.mark.parametrize("start", ["new", "previous release"])
def test_processes_starting_at_once_migrate_once(
    start: str, tmp_path: Path, previous_release_db: str
) -> None:
    url = previous_release_db if start == "previous release" else f"sqlite:///{tmp_path / 'n.db'}"
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _START, str(tmp_path / f"ready{i}"), str(go), url],
            cwd=REPO,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(4)
    ]
    deadline = time.monotonic() + 60
    while not all((tmp_path / f"ready{i}").exists() for i in range(4)):
        assert time.monotonic() < deadline, "the processes did not start"
        time.sleep(0.02)
    go.touch()
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    store = Store(url)
    assert [r["event"] for r in store.audit_rows()].count("start") == 4
    assert _revision(url) == migrate.head()
    assert _schema_differences(url) == []
