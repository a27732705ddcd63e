"""The trace a stage belongs to

- ``stages.trace_context``: the W3C ``traceparent`` of the API request that created the job (or of the
  stage that made this one due). Every send of the stage's task carries it when no span is current (the
  scheduler's outbox dispatcher, a lost task sent again), so a job stays one trace from the request
  through each stage (docs/OBSERVABILITY.md). Nullable: stages made before, or with tracing off, have
  none and their stages start traces of their own.

A column added with ``ALTER TABLE ... ADD COLUMN`` on both PostgreSQL and SQLite (no table copy).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-14
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("stages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("trace_context", sa.String(length=128), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("stages", schema=None) as batch_op:
        batch_op.drop_column("trace_context")
