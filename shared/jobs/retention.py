"""Retention: what the platform no longer needs is pruned, so no table grows for ever.

``prune`` (the scheduler calls it now and then) removes
- job events older than ``event_retention_days``, except those a webhook delivery still waits to send;
- webhook deliveries finished (delivered or failed) and older than that;
- idempotency keys past their ``expires_at``;
- uploads past their ``expires_at`` that no subject or render names (never used, refused, or whose
  jobs were deleted), with their stored files: recorded as ``StorageDeletion`` rows in the same
  transaction, which ``deletions.purge_due`` deletes (a file shared by the parts sent in one call goes
  with the last of their rows).

Every table is pruned in batches of ``BATCH`` rows, one short transaction each: a large backlog never
becomes one huge statement holding locks (or SQLite's single writer) for long.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import Engine, delete, exists, select
from sqlalchemy.orm import Session

from shared.db.models import Event, IdempotencyKey, Render, Subject, Upload, WebhookDelivery, utcnow
from shared.jobs import deletions

BATCH = 500
FINISHED_DELIVERY = ("delivered", "failed")

Sessions = Callable[[], Session]


def prune(engine_or_sessions: Engine | Sessions, settings, *, now: datetime | None = None) -> dict[str, int]:
    """Prune everything past its time (see the module); how many rows of each kind went."""
    sessions = deletions.sessions_of(engine_or_sessions)
    now = now or utcnow()
    cutoff = now - timedelta(days=settings.event_retention_days)
    pending = select(WebhookDelivery.event_id).where(WebhookDelivery.status == "pending")
    return {
        # deliveries first: an event's deletion would take its deliveries with it (foreign key)
        "webhook_deliveries": _delete_batches(
            sessions,
            WebhookDelivery,
            WebhookDelivery.status.in_(FINISHED_DELIVERY),
            WebhookDelivery.created_at < cutoff,
        ),
        "events": _delete_batches(sessions, Event, Event.created_at < cutoff, Event.id.not_in(pending)),
        "idempotency_keys": _delete_batches(sessions, IdempotencyKey, IdempotencyKey.expires_at < now),
        "uploads": _prune_uploads(sessions, now),
    }


def _delete_batches(sessions: Sessions, model, *where) -> int:
    """Delete the rows of ``model`` matching ``where``, ``BATCH`` at a time; how many. No ORDER BY: the
    database finds the rows by the index on the condition (events' ``created_at``, keys' ``expires_at``)
    rather than walking the primary key past every row that stays."""
    total = 0
    while True:
        with sessions() as s:
            ids = list(s.scalars(select(model.id).where(*where).limit(BATCH)))
            if ids:
                s.execute(delete(model).where(model.id.in_(ids)).execution_options(synchronize_session=False))
                s.commit()
        total += len(ids)
        if len(ids) < BATCH:
            return total


def _prune_uploads(sessions: Sessions, now: datetime) -> int:
    """Expired uploads nothing names, with their stored files recorded for deletion, a batch at a time."""
    unused = (
        select(Upload)
        .where(
            Upload.expires_at < now,
            ~exists().where(Subject.upload_id == Upload.id),
            ~exists().where(Render.upload_id == Upload.id),
        )
        .limit(BATCH)
    )
    total = 0
    while True:
        with sessions() as s:
            rows = list(s.scalars(unused))
            by_tenant: dict[str, list[Upload]] = defaultdict(list)
            for upload in rows:
                by_tenant[upload.tenant_id].append(upload)
                s.delete(upload)
            s.flush()
            for tenant_id, gone in by_tenant.items():
                gone_keys = deletions.unheld_keys(s, tenant_id, gone)
                deletions.record(s, tenant_id, object_keys=gone_keys, now=now)
            s.commit()
        total += len(rows)
        if len(rows) < BATCH:
            return total
