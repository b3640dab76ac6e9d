"""The clinical QA loop: structure sets sent back, per-ROI QA results, alerts, incidents.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def _lease() -> list[sa.Column]:
    return [
        sa.Column("lease_owner", sa.String(128), nullable=True),
        sa.Column("lease_expires_at", sa.Float(), nullable=True),
    ]


def _metrics() -> list[sa.Column]:
    names = ("dice", "hd", "hd95", "msd", "surface_dice", "apl", "volume_ai", "volume_approved")
    return [sa.Column(n, sa.Float(), nullable=True) for n in (*names, "volume_change")]


def upgrade() -> None:
    op.create_table(
        "structure_sets",
        sa.Column("sop_instance_uid", sa.String(64), primary_key=True),
        sa.Column("study_uid", sa.String(64), nullable=False),
        sa.Column("series_uid", sa.String(64), nullable=False),
        sa.Column("frame_of_reference_uid", sa.String(64), nullable=False),
        sa.Column("calling_ae", sa.String(16), nullable=False),
        sa.Column("received_at", sa.Float(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("approval_status", sa.String(16), nullable=False),
        sa.Column("structure_set_datetime", sa.String(32), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.Column("ai_uid", sa.String(64), nullable=False),
        sa.Column("compared_at", sa.Float(), nullable=True),
        *_lease(),
    )
    op.create_index("ix_structure_sets_study_uid", "structure_sets", ["study_uid"])
    op.create_index("ix_structure_sets_state", "structure_sets", ["state"])
    op.create_index("ix_structure_sets_job_id", "structure_sets", ["job_id"])
    op.create_table(
        "qa",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("study_uid", sa.String(64), nullable=False),
        sa.Column("model", sa.String(64), nullable=False),
        sa.Column("model_version", sa.String(32), nullable=False),
        sa.Column("roi", sa.String(64), nullable=False),
        sa.Column("approved_roi", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("ai_uid", sa.String(64), nullable=False),
        sa.Column("approved_uid", sa.String(64), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        *_metrics(),
        sa.Column("unchanged", sa.Boolean(), nullable=False),
        sa.Column("tolerance_mm", sa.Float(), nullable=True),
        sa.Column("apl_tolerance_mm", sa.Float(), nullable=True),
        sa.Column("superseded", sa.Boolean(), nullable=False, server_default="0"),
    )
    op.create_index("ix_qa_job_id", "qa", ["job_id"])
    op.create_index("ix_qa_approved_uid", "qa", ["approved_uid"])
    op.create_index("ix_qa_at", "qa", ["at"])
    op.create_table(
        "alerts",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("key", sa.String(255), nullable=False, unique=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("model", sa.String(64), nullable=False),
        sa.Column("model_version", sa.String(32), nullable=False),
        sa.Column("roi", sa.String(64), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("acknowledged_by", sa.String(64), nullable=False),
        sa.Column("acknowledged_at", sa.Float(), nullable=True),
    )
    op.create_index("ix_alerts_at", "alerts", ["at"])
    op.create_table(
        "incidents",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("key", sa.String(255), nullable=True, unique=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("actions", sa.Text(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.Column("study_uid", sa.String(64), nullable=False),
        sa.Column("model", sa.String(64), nullable=False),
        sa.Column("model_version", sa.String(32), nullable=False),
        sa.Column("roi", sa.String(64), nullable=False),
        sa.Column("opened_at", sa.Float(), nullable=False),
        sa.Column("opened_by", sa.String(64), nullable=False),
        sa.Column("decided_at", sa.Float(), nullable=True),
        sa.Column("decided_by", sa.String(64), nullable=False),
        sa.Column("closed_at", sa.Float(), nullable=True),
        sa.Column("closed_by", sa.String(64), nullable=False),
    )
    op.create_index("ix_incidents_state", "incidents", ["state"])


def downgrade() -> None:
    op.drop_table("incidents")
    op.drop_table("alerts")
    op.drop_table("qa")
    op.drop_table("structure_sets")
