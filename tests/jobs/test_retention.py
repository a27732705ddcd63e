"""Retention (shared/jobs/retention.py) on SQLite and on PostgreSQL: old events and finished webhook
deliveries, expired idempotency keys, and expired uploads nothing uses (with their stored files, through
recorded deletions the purge completes) are pruned in bounded batches; everything else stays. The
``engine`` fixture (both databases, migrated) is tests/jobs/conftest.py's."""

from __future__ import annotations

import uuid
from datetime import timedelta

from sqlalchemy import event, func, select

from shared.db.models import (
    Event,
    IdempotencyKey,
    StorageDeletion,
    Tenant,
    Upload,
    Webhook,
    WebhookDelivery,
    utcnow,
)
from shared.db.session import session_scope
from shared.jobs import deletions, keys, lifecycle, retention
from shared.settings import Settings
from shared.storage import LocalStorage

NOW = utcnow()
DAYS = 7


def ago(days: float = 0, hours: float = 0):
    return NOW - timedelta(days=days, hours=hours)


def count(engine, model, *where) -> int:
    with session_scope(engine) as s:
        return s.scalar(select(func.count()).select_from(model).where(*where))


def deletes_of(engine, table: str) -> list[int]:
    """Record the DELETE statements run on ``table``: the row count of each."""
    seen: list[int] = []

    @event.listens_for(engine, "after_cursor_execute")
    def _count(_conn, _cursor, statement, _params, _context, _many) -> None:
        if statement.lstrip().upper().startswith(f"DELETE FROM {table.upper()}"):
            seen.append(_cursor.rowcount)

    return seen


def test_old_events_and_finished_deliveries_are_pruned_in_bounded_batches(engine, monkeypatch):
    monkeypatch.setattr(retention, "BATCH", 50)
    with session_scope(engine) as s:
        tenant = Tenant(name="studio")
        s.add(tenant)
        s.flush()
        hook = Webhook(tenant_id=tenant.id, url="https://example.com/h", events=["*"], secret="x")
        s.add(hook)

        def new_event(age_days: float) -> Event:
            e = Event(tenant_id=tenant.id, type="job", resource="subject", resource_id="s", data={},
                      created_at=ago(age_days))  # fmt: skip
            s.add(e)
            return e

        old = [new_event(DAYS + 1) for _ in range(120)]
        recent = [new_event(DAYS - 1) for _ in range(5)]
        s.flush()
        for e, status in zip(old[:3], ("delivered", "failed", "pending"), strict=True):
            s.add(WebhookDelivery(tenant_id=tenant.id, webhook_id=hook.id, event_id=e.id, status=status,
                                  created_at=e.created_at))  # fmt: skip
        s.add(WebhookDelivery(tenant_id=tenant.id, webhook_id=hook.id, event_id=recent[0].id,
                              status="delivered", created_at=recent[0].created_at))  # fmt: skip
        still_sending = old[2].id
    event_deletes = deletes_of(engine, "events")

    pruned = retention.prune(engine, Settings(event_retention_days=DAYS), now=NOW)
    assert pruned["events"] == 119 and pruned["webhook_deliveries"] == 2
    assert count(engine, Event) == 6  # the recent ones, and the old one a delivery still waits to send
    assert count(engine, Event, Event.id == still_sending) == 1
    assert {d for (d,) in _rows(engine, WebhookDelivery.status)} == {"pending", "delivered"}
    assert event_deletes and max(event_deletes) <= 50, event_deletes  # never one huge statement
    assert retention.prune(engine, Settings(event_retention_days=DAYS), now=NOW)["events"] == 0


def _rows(engine, *columns):
    with session_scope(engine) as s:
        return list(s.execute(select(*columns)))


def test_expired_idempotency_keys_are_pruned(engine):
    with session_scope(engine) as s:
        tenant = Tenant(name="studio")
        s.add(tenant)
        s.flush()
        for i, expires in enumerate((ago(hours=1), ago(days=30), NOW + timedelta(hours=1))):
            s.add(IdempotencyKey(tenant_id=tenant.id, key=f"k{i}", request_hash="h", expires_at=expires))
    assert retention.prune(engine, Settings(), now=NOW)["idempotency_keys"] == 2
    assert [k for (k,) in _rows(engine, IdempotencyKey.key)] == ["k2"]


def test_expired_uploads_nothing_uses_go_with_their_files_and_shared_objects_with_the_last_part(
    engine, tmp_path
):
    storage = LocalStorage(tmp_path / "storage", "secret", "http://api.test")
    with session_scope(engine) as s:
        tenant = Tenant(name="studio")
        s.add(tenant)
        s.flush()
        t = tenant.id

        def upload(name: str, expires, key: str | None = None, offset: int | None = None) -> Upload:
            u = Upload(id=uuid.uuid4().hex, tenant_id=t, filename=name, content_type="audio/wav", bytes=4,
                       storage_key="", part_offset=offset, expires_at=expires)  # fmt: skip
            u.storage_key = key or keys.upload_key(t, u.id)
            s.add(u)
            storage.put_bytes(u.storage_key, b"data" * (3 if offset is not None else 1))
            return u

        never_used = upload("never-used.wav", ago(hours=2))  # presigned, PUT, never named
        used = upload("talk.mp4", ago(days=3))  # expired long ago, but a subject learned from it
        fresh = upload("fresh.wav", NOW + timedelta(minutes=30))
        bundle = keys.upload_key(t, "bundle1")  # three files sent inline: one used by a render
        kept_parts = [upload(f"b{i}.wav", ago(hours=1), bundle, 4 * i) for i in range(3)]
        gone_bundle = keys.upload_key(t, "bundle2")  # two files sent inline, neither ever used
        for i in range(2):
            upload(f"g{i}.wav", ago(hours=1), gone_bundle, 4 * i)
        s.flush()
        subject, _ = lifecycle.create_subject(s, t, name="ann", profile="tiny", upload_id=used.id)
        lifecycle.create_render(s, t, subject, upload_id=kept_parts[1].id, audio_key=bundle)
    before = set(storage.list(""))

    assert retention.prune(engine, Settings(), now=NOW)["uploads"] == 1 + 2 + 2
    left = {u for (u,) in _rows(engine, Upload.id)}
    assert left == {used.id, fresh.id, kept_parts[1].id}
    recorded = {k for (k,) in _rows(engine, StorageDeletion.key)}
    assert recorded == {never_used.storage_key, gone_bundle}  # the used bundle stays whole
    assert set(storage.list("")) == before  # nothing deleted before its deletion is recorded

    assert deletions.purge_due(engine, storage, now=NOW + timedelta(seconds=1)) == 2
    assert set(storage.list("")) == before - {never_used.storage_key, gone_bundle}
    assert deletions.purge_due(engine, storage, now=NOW + timedelta(hours=1)) == 2  # the second sweep
    assert count(engine, StorageDeletion) == 0
