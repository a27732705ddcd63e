"""Delivery that survives the broker, fenced claims, and housekeeping

- ``stages.lease``: the running owner's token (a new one at every claim); writes of a stage check it.
- ``stages.ready_at`` / ``stages.sent_at``: the outbox. A queued stage is due from ``ready_at``; the
  scheduler sends the due ones never sent (``sent_at`` NULL) and sends again those the broker lost.
- ``scheduler_leases``: one ``synctalk scheduler`` acts at a time. ``workers``: what workers report of
  themselves (the default profile). ``storage_deletions``: files of deleted rows, deleted until storage
  confirms. Indexes for retention and deletion: events by age, uploads by expiry and stored object,
  subjects and renders by upload.

Stages queued before this revision: the due ones (a subject's first unfinished stage, a render's stage
once its subject succeeded) get ``ready_at`` now and no ``sent_at``, so the scheduler sends them (a
duplicate of a message still in the broker is harmless: its claim finds the stage taken or done).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

When = sa.DateTime(timezone=True)
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("stages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("lease", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("ready_at", When, nullable=True))
        batch_op.add_column(sa.Column("sent_at", When, nullable=True))
        batch_op.create_index("ix_stages_status_ready", ["status", "ready_at"], unique=False)
        batch_op.create_index("ix_stages_queue_sent", ["queue", "sent_at"], unique=False)
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.create_index("ix_events_created_at", ["created_at"], unique=False)
    # deletion and retention ask "does anything still use this upload / this stored object?"
    for table in ("subjects", "renders"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.create_index(batch_op.f(f"ix_{table}_upload_id"), ["upload_id"], unique=False)
    with op.batch_alter_table("uploads", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_uploads_storage_key"), ["storage_key"], unique=False)
        batch_op.create_index(batch_op.f("ix_uploads_expires_at"), ["expires_at"], unique=False)
    op.create_table(
        "scheduler_leases",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("owner", sa.String(length=200), nullable=False),
        sa.Column("expires_at", When, nullable=False),
        sa.Column("acquired_at", When, nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_scheduler_leases")),
    )
    op.create_table(
        "workers",
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("queues", sa.String(length=64), nullable=False),
        sa.Column("accelerator", sa.String(length=200), nullable=True),
        sa.Column("started_at", When, nullable=False),
        sa.Column("seen_at", When, nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_workers")),
    )
    with op.batch_alter_table("workers", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_workers_seen_at"), ["seen_at"], unique=False)
    op.create_table(
        "storage_deletions",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("tenant_id", sa.String(length=32), nullable=False),
        sa.Column("prefix", sa.String(length=512), nullable=True),
        sa.Column("key", sa.String(length=512), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", When, nullable=False),
        sa.Column("next_attempt_at", When, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_storage_deletions")),
    )
    with op.batch_alter_table("storage_deletions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_storage_deletions_tenant_id"), ["tenant_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_storage_deletions_next_attempt_at"), ["next_attempt_at"], unique=False
        )
    _mark_due_stages()


def _mark_due_stages() -> None:
    """Queued stages that were due (or already sent) before this revision become due and unsent."""
    # a subject's stage is due when no earlier stage of its job is unfinished
    op.execute(
        sa.text(
            "UPDATE stages SET ready_at = CURRENT_TIMESTAMP WHERE status = 'queued' AND subject_id IS NOT NULL "
            "AND subject_id IN (SELECT id FROM subjects WHERE status IN ('queued', 'running')) "
            "AND NOT EXISTS (SELECT 1 FROM stages AS earlier WHERE earlier.job_id = stages.job_id "
            "AND earlier.position < stages.position AND earlier.status <> 'succeeded')"
        )
    )
    # a render's stage is due once its subject succeeded
    op.execute(
        sa.text(
            "UPDATE stages SET ready_at = CURRENT_TIMESTAMP WHERE status = 'queued' AND render_id IS NOT NULL "
            "AND render_id IN (SELECT renders.id FROM renders JOIN subjects ON subjects.id = renders.subject_id "
            "WHERE renders.status IN ('queued', 'running') AND subjects.status = 'succeeded')"
        )
    )


def downgrade() -> None:
    with op.batch_alter_table("storage_deletions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_storage_deletions_next_attempt_at"))
        batch_op.drop_index(batch_op.f("ix_storage_deletions_tenant_id"))
    op.drop_table("storage_deletions")
    with op.batch_alter_table("workers", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_workers_seen_at"))
    op.drop_table("workers")
    op.drop_table("scheduler_leases")
    with op.batch_alter_table("uploads", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_uploads_expires_at"))
        batch_op.drop_index(batch_op.f("ix_uploads_storage_key"))
    for table in ("renders", "subjects"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_index(batch_op.f(f"ix_{table}_upload_id"))
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_index("ix_events_created_at")
    with op.batch_alter_table("stages", schema=None) as batch_op:
        batch_op.drop_index("ix_stages_queue_sent")
        batch_op.drop_index("ix_stages_status_ready")
        batch_op.drop_column("sent_at")
        batch_op.drop_column("ready_at")
        batch_op.drop_column("lease")
