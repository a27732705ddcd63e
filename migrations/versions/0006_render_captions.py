"""Captions of renders

- ``renders.language``: the speech's language as the request gave it (a Whisper code), null: detect.
- ``renders.captions``: ``on`` | ``off`` | ``burn`` (server default ``on``: renders made before had
  no say and get the default a new one gets).
- ``renders.captions_key``: the stored WebVTT file (the SRT beside it), null until the render made them.
- ``renders.captions_language``: the captions' language (the one asked for, or Whisper's detection).

Columns added with ``ALTER TABLE ... ADD COLUMN`` on both PostgreSQL and SQLite (no table copy).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("renders", schema=None) as batch_op:
        batch_op.add_column(sa.Column("language", sa.String(length=8), nullable=True))
        batch_op.add_column(sa.Column("captions", sa.String(length=8), nullable=False, server_default="on"))
        batch_op.add_column(sa.Column("captions_key", sa.String(length=512), nullable=True))
        batch_op.add_column(sa.Column("captions_language", sa.String(length=8), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("renders", schema=None) as batch_op:
        batch_op.drop_column("captions_language")
        batch_op.drop_column("captions_key")
        batch_op.drop_column("captions")
        batch_op.drop_column("language")
