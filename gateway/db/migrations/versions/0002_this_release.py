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

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
