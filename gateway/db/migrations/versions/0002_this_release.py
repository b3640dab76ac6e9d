"""This release's schema changes, from the previous release's (0001) to ``Base.metadata``.

Add here every column or table this release adds to gateway/db/database.py, until it ships:
- a column: one ``batch_op.add_column`` inside ``op.batch_alter_table(table)`` (on SQLite batch
  mode uses ALTER TABLE ADD COLUMN where it can and copies the table where it must; on
  PostgreSQL it is a plain ALTER). A column that is NOT NULL needs a ``server_default`` so the
  rows already there get a value; a Python-side ``default=`` alone does not fill them.
- a table: ``op.create_table`` with its indexes (``op.create_index``).
For example::

    with op.batch_alter_table("studies") as batch_op:
        batch_op.add_column(sa.Column("recheck_at", sa.Float(), nullable=True))

Mirror each one in ``downgrade``. tests/unit/test_migrations.py fails while Base.metadata and the
migrated schema differ, and names the difference.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

OPEN = "state IN ('waiting', 'queued', 'running', 'delivering')"


def upgrade() -> None:
    with op.batch_alter_table("studies") as b:
        b.add_column(
            sa.Column("open_associations", sa.Integer(), nullable=False, server_default="0")
        )
        b.add_column(sa.Column("recheck_at", sa.Float(), nullable=True))
        b.add_column(sa.Column("reason", sa.Text(), nullable=False, server_default=""))
    op.create_index("ix_studies_recheck_at", "studies", ["recheck_at"])
    with op.batch_alter_table("series") as b:
        b.add_column(sa.Column("patient_key", sa.String(64), nullable=True))
    op.create_table(
        "settings",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text(), nullable=False),
    )
    with op.batch_alter_table("deliveries") as b:
        b.add_column(sa.Column("lease_owner", sa.String(128), nullable=True))
        b.add_column(sa.Column("lease_expires_at", sa.Float(), nullable=True))
    with op.batch_alter_table("jobs") as b:
        b.add_column(sa.Column("models", sa.JSON(), nullable=True))
        b.add_column(sa.Column("plan", sa.JSON(), nullable=True))
        b.add_column(sa.Column("outcome", sa.JSON(), nullable=True))
        b.add_column(sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"))
        b.add_column(sa.Column("lease_owner", sa.String(128), nullable=True))
        b.add_column(sa.Column("lease_expires_at", sa.Float(), nullable=True))
    _typed_jobs(op.get_bind())
    with op.batch_alter_table("jobs") as b:
        b.drop_column("model")
        b.drop_column("results")
    # One unfinished job per study and rule. An older release could leave two: the newest stays.
    op.execute(
        "UPDATE jobs SET state = 'failed', reason = 'superseded by a newer job at upgrade' "
        f"WHERE {OPEN} AND id NOT IN (SELECT MAX(id) FROM jobs WHERE {OPEN} "
        "GROUP BY study_uid, rule)"
    )
    op.create_index(
        "ix_jobs_one_open_per_rule",
        "jobs",
        ["study_uid", "rule"],
        unique=True,
        sqlite_where=sa.text(OPEN),
        postgresql_where=sa.text(OPEN),
    )


def _typed_jobs(bind: Any) -> None:
    """The previous release's comma-separated ``model`` and untyped ``results`` become the
    rule's model list, the typed plan and the typed outcome (gateway.job)."""
    rows = bind.execute(sa.text("SELECT id, model, input_series, results FROM jobs")).all()
    for job_id, model, input_series, results in rows:
        models = [m.strip() for m in str(model or "").split(",") if m.strip()]
        results = _load(results)
        series = _load(input_series) or []
        ran = results.get("models") or {}
        plan_src = results.get("plan") or ({models[0]: series} if len(models) == 1 else {})
        plan: dict[str, Any] = {"models": {m: {"series": list(u)} for m, u in plan_src.items()}}
        for m, o in ran.items():
            if isinstance(o, dict) and o.get("state") == "refused":
                plan["models"][m] = {"refused": str(o.get("reason", ""))}
        outcome: dict[str, Any] = {"models": {}, "rois": []}
        for m, o in ran.items():
            if not isinstance(o, dict) or o.get("state") not in ("done", "failed", "refused"):
                continue
            entry: dict[str, Any] = {"state": o["state"], "reason": str(o.get("reason", ""))}
            if o["state"] == "done":
                entry["provenance"] = _provenance(m, o.get("version"), o.get("weights_sha256"))
                entry["input_series"] = list(o.get("input_series") or [])
                entry["volume_s"] = float(o.get("volume_s") or 0.0)
                entry["segment_s"] = float(o.get("segment_s") or 0.0)
            outcome["models"][m] = entry
        for r in results.get("rois") or []:
            if isinstance(r, dict) and "name" in r:
                outcome["rois"].append(
                    {
                        "name": str(r["name"]),
                        "provenance": _provenance(r.get("model"), r.get("model_version"), ""),
                        "volume_cc": float(r.get("volume_cc") or 0.0),
                    }
                )
        for key, cast in (("reference_series", str), ("merge_s", float), ("partial", str)):
            if key in results:
                outcome[key] = cast(results[key])
        bind.execute(
            sa.text(
                "UPDATE jobs SET models = :models, plan = :plan, outcome = :outcome WHERE id = :id"
            ),
            {
                "models": json.dumps(models),
                "plan": json.dumps(plan),
                "outcome": json.dumps(outcome),
                "id": job_id,
            },
        )


def _load(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return {}
    return value or {}


def _provenance(name: Any, version: Any, sha: Any) -> dict[str, str]:
    return {
        "model_name": str(name or ""),
        "model_version": str(version or ""),
        "weights_sha256": str(sha or ""),
    }


def downgrade() -> None:
    op.drop_index("ix_jobs_one_open_per_rule", "jobs")
    with op.batch_alter_table("jobs") as b:
        b.add_column(sa.Column("model", sa.String(255), nullable=False, server_default=""))
        b.add_column(sa.Column("results", sa.JSON(), nullable=False, server_default="{}"))
        for column in ("models", "plan", "outcome", "attempts", "lease_owner", "lease_expires_at"):
            b.drop_column(column)
    with op.batch_alter_table("deliveries") as b:
        b.drop_column("lease_owner")
        b.drop_column("lease_expires_at")
    op.drop_table("settings")
    with op.batch_alter_table("series") as b:
        b.drop_column("patient_key")
    op.drop_index("ix_studies_recheck_at", "studies")
    with op.batch_alter_table("studies") as b:
        for column in ("open_associations", "recheck_at", "reason"):
            b.drop_column(column)
