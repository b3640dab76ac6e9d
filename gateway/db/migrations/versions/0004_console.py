"""The operator's console: accounts, destination status, component states, alert delivery,
job previews, the patient-key index for the exact-match search.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("password_hash", sa.Text(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("failed_logins", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("locked_until", sa.Float(), nullable=True),
        sa.Column("last_login_at", sa.Float(), nullable=True),
        sa.Column("disabled", sa.Boolean(), nullable=False, server_default="0"),
        sa.Column("session_epoch", sa.Integer(), nullable=False, server_default="0"),
    )
    op.create_table(
        "destination_status",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("up", sa.Boolean(), nullable=True),
        sa.Column("rtt_ms", sa.Float(), nullable=True),
        sa.Column("checked_at", sa.Float(), nullable=True),
        sa.Column("last_success_at", sa.Float(), nullable=True),
        sa.Column("down_since", sa.Float(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=False, server_default=""),
        sa.Column("paused", sa.Boolean(), nullable=False, server_default="0"),
        sa.Column("paused_by", sa.String(64), nullable=False, server_default=""),
        sa.Column("paused_at", sa.Float(), nullable=True),
    )
    op.create_table(
        "components",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False, server_default=""),
        sa.Column("owner", sa.String(128), nullable=False, server_default=""),
        sa.Column("updated_at", sa.Float(), nullable=False),
    )
    op.create_table(
        "self_tests",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("study_uid", sa.String(64), nullable=False, unique=True),
        sa.Column("destination", sa.String(64), nullable=False),
        sa.Column("requested_by", sa.String(64), nullable=False),
        sa.Column("started_at", sa.Float(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.Column("finished_at", sa.Float(), nullable=True),
        sa.Column("timings", sa.JSON(), nullable=False),
    )
    with op.batch_alter_table("alerts") as batch:
        batch.add_column(sa.Column("job_id", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("destination", sa.String(64), nullable=False, server_default=""))
        batch.add_column(sa.Column("resolved_at", sa.Float(), nullable=True))
        batch.add_column(sa.Column("notified_at", sa.Float(), nullable=True))
        batch.add_column(
            sa.Column("notified_count", sa.Integer(), nullable=False, server_default="0")
        )
        batch.add_column(
            sa.Column("resolved_notified", sa.Boolean(), nullable=False, server_default="0")
        )
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("preview_path", sa.Text(), nullable=True))
    op.create_index("ix_series_patient_key", "series", ["patient_key"])
    op.create_index("ix_alerts_state", "alerts", ["state"])
    op.create_index("ix_jobs_created_at", "jobs", ["created_at"])
    op.create_index("ix_audit_event", "audit", ["event"])


def downgrade() -> None:
    op.drop_index("ix_audit_event", "audit")
    op.drop_index("ix_jobs_created_at", "jobs")
    op.drop_index("ix_alerts_state", "alerts")
    op.drop_index("ix_series_patient_key", "series")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("preview_path")
    with op.batch_alter_table("alerts") as batch:
        for name in (
            "resolved_notified",
            "notified_count",
            "notified_at",
            "resolved_at",
            "destination",
            "job_id",
        ):
            batch.drop_column(name)
    op.drop_table("self_tests")
    op.drop_table("components")
    op.drop_table("destination_status")
    op.drop_table("users")
