"""uploads.part_offset: an upload stored as a part of a shared object

Small files sent inline (``POST /v1/uploads/files``) are stored together, one object per call, and each
upload names its byte range in it: ``storage_key`` is the shared object, ``part_offset`` where the file
starts and ``bytes`` its length. NULL (every upload before this): the upload is the whole object.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("uploads", schema=None) as batch_op:
        batch_op.add_column(sa.Column("part_offset", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("uploads", schema=None) as batch_op:
        batch_op.drop_column("part_offset")
