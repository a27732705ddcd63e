"""Stored files to delete, recorded in the database before anything is deleted, so none is ever orphaned.

Deleting rows and deleting their files cannot happen in one transaction: storage is not the database.
So the transaction that deletes a subject (or expired uploads, shared/jobs/retention.py) also writes a
``StorageDeletion`` row for each prefix or key to delete; after its commit the caller tries them at
once (``purge_due(..., ids=...)``), and whatever storage refused then (unreachable, a read-only
folder) stays due for the scheduler, which calls ``purge_due`` every pass and retries with backoff.

A deletion storage confirmed is swept once more ``RESWEEP_AFTER_S`` after it was recorded, then its row
is removed: a worker still running a stage of the deleted job publishes its files until it next finds
its stage gone (its next progress report or heartbeat, or the end of an upload under way), and such a
late file would otherwise stay forever.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session, sessionmaker

from shared.db.models import Render, StorageDeletion, Subject, Upload, utcnow
from shared.jobs import keys
from shared.storage import Storage

log = logging.getLogger(__name__)

RESWEEP_AFTER_S = 600.0
RETRY_FIRST_S = 30.0  # waits after a refusal: 30 s, doubling, at most an hour
RETRY_MAX_S = 3600.0
CLAIM_S = 300.0  # a purger that dies mid-way leaves its row due again after this
IN_CHUNK = 500  # ids per IN (...): well under every database's limit on bound parameters

Sessions = Callable[[], Session]


# --- recording: in the caller's transaction -------------------------------------------------------
def record_subject_deletion(session: Session, tenant_id: str, subject_id: str) -> list[StorageDeletion]:
    """Delete the tenant's subject ``subject_id`` (its renders, stages and batches go with it by foreign
    keys) and the uploads nothing else uses, and record every stored file of theirs to delete: the
    subject's prefix, each render's prefix, and each upload's object once no upload row is left on it
    (files sent inline share one object per call). Nothing is committed or deleted from storage here:
    the caller commits, then purges the returned rows. No subject: nothing is done, ``[]``."""
    subject = session.scalars(
        select(Subject).where(Subject.tenant_id == tenant_id, Subject.id == subject_id)
    ).first()
    if subject is None:
        return []
    renders = session.execute(
        select(Render.id, Render.upload_id).where(Render.subject_id == subject_id)
    ).all()
    prefixes = [keys.subject_prefix(tenant_id, subject_id)]
    prefixes += [keys.render_prefix(tenant_id, r.id) for r in renders]
    used = {subject.upload_id, *(r.upload_id for r in renders)} - {None}
    session.delete(subject)
    session.flush()  # the subject and its renders are gone: what they used is now judged without them
    upload_keys = delete_unused_uploads(session, tenant_id, used)
    return record(session, tenant_id, prefixes=prefixes, object_keys=upload_keys)


def delete_unused_uploads(session: Session, tenant_id: str, upload_ids: Iterable[str]) -> list[str]:
    """Delete those of the tenant's uploads ``upload_ids`` that no subject or render names any more;
    the storage keys left without any upload row on them (to delete, by the caller's record)."""
    ids = list(dict.fromkeys(upload_ids))
    if not ids:
        return []
    named = _named_uploads(session, tenant_id, ids)
    gone = [
        u
        for chunk in _chunks(ids)
        for u in session.scalars(select(Upload).where(Upload.tenant_id == tenant_id, Upload.id.in_(chunk)))
        if u.id not in named
    ]
    for upload in gone:
        session.delete(upload)
    session.flush()
    return unheld_keys(session, tenant_id, gone)


def unheld_keys(session: Session, tenant_id: str, deleted: list[Upload]) -> list[str]:
    """The storage keys of the just-deleted uploads ``deleted`` that no upload row holds any more. A
    whole upload's key is its own; a part's is shared by the other files sent with it in one call, and
    kept while any of their rows is left (named by a job, or still usable until it expires)."""
    out = []
    for key in dict.fromkeys(u.storage_key for u in deleted if u.storage_key):
        shared = any(u.part_offset is not None for u in deleted if u.storage_key == key)
        held = shared and session.scalar(
            select(Upload.id).where(Upload.tenant_id == tenant_id, Upload.storage_key == key).limit(1)
        )
        if not held:
            out.append(key)
    return out


def _named_uploads(session: Session, tenant_id: str, ids: list[str]) -> set[str]:
    """Those of ``ids`` some subject or render names (only the tenant's own can: it narrows the scan)."""
    named: set[str] = set()
    for chunk in _chunks(ids):
        for model in (Subject, Render):
            named.update(session.scalars(
                select(model.upload_id).where(model.tenant_id == tenant_id, model.upload_id.in_(chunk))
            ))  # fmt: skip
    return named


def record(
    session: Session, tenant_id: str, *, prefixes: Iterable[str] = (), object_keys: Iterable[str] = (),
    now: datetime | None = None,
) -> list[StorageDeletion]:  # fmt: skip
    """StorageDeletion rows for ``prefixes`` (everything under each) and ``object_keys`` (one object
    each), due ``now``, added to the session and flushed (their ids are known)."""
    now = now or utcnow()
    rows = [
        StorageDeletion(tenant_id=tenant_id, prefix=p, created_at=now, next_attempt_at=now) for p in prefixes
    ]
    rows += [
        StorageDeletion(tenant_id=tenant_id, key=k, created_at=now, next_attempt_at=now) for k in object_keys
    ]
    session.add_all(rows)
    session.flush()
    return rows


# --- purging: after the commit, and on every scheduler pass ---------------------------------------
def purge_due(
    sessions_or_engine: Engine | Sessions, storage: Storage, *, now: datetime | None = None,
    limit: int = 100, ids: Iterable[int] | None = None,
) -> int:  # fmt: skip
    """Delete from storage what the due StorageDeletion rows name (at most ``limit``; only ``ids`` when
    given: the rows a request just committed); how many storage confirmed. Each row is claimed first
    (purgers running at once never take the same row), and no transaction stays open while storage
    works. A refusal is recorded on its row (``attempts``, ``last_error``) and tried again after a
    backoff; it never stops the others."""
    sessions = sessions_of(sessions_or_engine)
    now = now or utcnow()
    stmt = select(StorageDeletion.id).where(StorageDeletion.next_attempt_at <= now)
    if ids is not None:
        stmt = stmt.where(StorageDeletion.id.in_(list(ids)))
    with sessions() as s:
        due = list(s.scalars(stmt.order_by(StorageDeletion.next_attempt_at, StorageDeletion.id).limit(limit)))
    return sum(_purge_one(sessions, storage, row_id, now) for row_id in due)


def _purge_one(sessions: Sessions, storage: Storage, row_id: int, now: datetime) -> bool:
    target = _claim(sessions, row_id, now)
    if target is None:
        return False
    prefix, key = target
    try:
        if prefix is not None:
            storage.delete_prefix(prefix)
        elif key is not None:
            storage.delete(key)
    except Exception as exc:  # noqa: BLE001 -- any refusal is retried later (a local folder raises OSError)
        error = exc
        _settle(sessions, row_id, lambda s, row: _retry_later(row, error, now))
        return False
    _settle(sessions, row_id, lambda s, row: _done(s, row, now))
    return True


def _claim(sessions: Sessions, row_id: int, now: datetime) -> tuple[str | None, str | None] | None:
    """Take the row for ``CLAIM_S`` (it is not due meanwhile); (prefix, key), or None when it is not due
    (done, or another purger has it). A purger that dies holding it leaves it due again after that."""
    with sessions() as s:
        taken = s.execute(
            update(StorageDeletion)
            .where(StorageDeletion.id == row_id, StorageDeletion.next_attempt_at <= now)
            .values(next_attempt_at=now + timedelta(seconds=CLAIM_S))
            .execution_options(synchronize_session=False)
        ).rowcount
        s.commit()
        if not taken:
            return None
        row = s.get(StorageDeletion, row_id)
        return (row.prefix, row.key) if row is not None else None


def _settle(sessions: Sessions, row_id: int, change: Callable[[Session, StorageDeletion], None]) -> None:
    with sessions() as s:
        row = s.get(StorageDeletion, row_id)
        if row is not None:
            change(s, row)
            s.commit()


def _done(session: Session, row: StorageDeletion, now: datetime) -> None:
    """Storage confirmed: the row goes, unless a late writer may still add a file (see the module)."""
    resweep_at = _aware(row.created_at) + timedelta(seconds=RESWEEP_AFTER_S)
    if _aware(now) < resweep_at:
        row.attempts += 1
        row.last_error = None
        row.next_attempt_at = resweep_at
    else:
        session.delete(row)


def _retry_later(row: StorageDeletion, exc: Exception, now: datetime) -> None:
    row.attempts += 1
    row.last_error = f"{type(exc).__name__}: {exc}"[:1000]
    wait = min(RETRY_MAX_S, RETRY_FIRST_S * 2 ** min(row.attempts - 1, 20))
    row.next_attempt_at = now + timedelta(seconds=wait)
    log.warning(
        "storage refused deletion %s (%s): %s; attempt %d, next in %.0f s",
        row.id, row.prefix or row.key, row.last_error, row.attempts, wait,
    )  # fmt: skip


def _aware(t: datetime) -> datetime:
    """SQLite gives times back without their zone; every stored time is UTC."""
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


def sessions_of(sessions_or_engine: Engine | Sessions) -> Sessions:
    """A session factory from an engine, or the factory itself."""
    if isinstance(sessions_or_engine, Engine):
        return sessionmaker(sessions_or_engine, expire_on_commit=False)
    return sessions_or_engine


def _chunks(ids: list) -> Iterable[list]:
    for i in range(0, len(ids), IN_CHUNK):
        yield ids[i : i + IN_CHUNK]
