"""``Idempotency-Key`` on every POST (API.md): the same key with the same request returns the original
response (same resource id); the same key with another request is a 409. Keys live 24 hours.

The first request with a key inserts a placeholder row and commits it (the unique constraint decides
between two racing requests). The request's work never commits itself: its changes and the key's
recorded response are committed together, in one transaction, so the key is kept exactly when the work
was (a retry after a failure that committed nothing runs again; a retry after anything that follows
the commit, say the broker refusing the task, gets the original answer and creates nothing twice).
What must happen only once the work is committed (sending its tasks) is registered with
``after_commit`` and never fails the request: the scheduler sends what was not sent.

Everything goes through the request's own session: a request never holds two pooled connections at
once (with many concurrent POSTs, a second connection waited for while holding the first exhausted the
pool: measured).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

from fastapi.responses import JSONResponse
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from services.api.deps import release
from services.api.problems import ApiProblem
from shared.db.models import IdempotencyKey, utcnow

log = logging.getLogger(__name__)
KEEP = timedelta(hours=24)
# a key still without an answer after this long belongs to a request that died before committing
IN_PROGRESS_TTL = timedelta(minutes=15)
MAX_KEY = 200


def request_hash(*parts: str | bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode() if isinstance(p, str) else p)
        h.update(b"\0")
    return h.hexdigest()


@dataclass
class Idempotency:
    """One POST's key (None: the client sent none, nothing is recorded)."""

    session: Session  # the request's session; begin() must run before the request's own work
    tenant_id: str
    key: str | None
    _after: list[Callable[[], None]] = field(default_factory=list)

    def after_commit(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` once the work is committed (sending its tasks); its errors are logged, not raised."""
        self._after.append(fn)

    def _row(self) -> IdempotencyKey | None:
        return self.session.scalars(
            select(IdempotencyKey).where(
                IdempotencyKey.tenant_id == self.tenant_id, IdempotencyKey.key == self.key
            )
        ).first()

    def begin(self, digest: str) -> JSONResponse | None:
        """The original response when this key was used for this request before; None when the request
        should run (the key is now reserved); ApiProblem 409 on a conflict."""
        if self.key is None:
            return None
        if len(self.key) > MAX_KEY:
            raise ApiProblem(422, "invalid_request", f"Idempotency-Key is longer than {MAX_KEY} characters.")
        s = self.session
        for _ in range(3):
            row = self._row()
            if row is not None and row.expires_at.replace(tzinfo=None) < utcnow().replace(tzinfo=None):
                s.delete(row)  # expired: the key is free again
                s.commit()
                row = None
            if row is not None:
                if row.request_hash != digest:
                    raise ApiProblem(
                        409, "idempotency_conflict",
                        "This Idempotency-Key was used for a different request; use a new key.",
                    )  # fmt: skip
                if row.status_code is None and _aware(row.created_at) < utcnow() - IN_PROGRESS_TTL:
                    s.delete(row)  # its request died without committing anything (else it had an answer)
                    s.commit()
                    continue
                if row.status_code is None:
                    raise ApiProblem(
                        409, "idempotency_in_progress",
                        "A request with this Idempotency-Key is still running; retry in a moment.",
                        {"Retry-After": "1"},
                    )  # fmt: skip
                headers = {**(row.headers or {}), "Idempotent-Replayed": "true"}
                return JSONResponse(row.response, status_code=row.status_code, headers=headers)
            s.add(
                IdempotencyKey(
                    tenant_id=self.tenant_id, key=self.key, request_hash=digest, expires_at=utcnow() + KEEP
                )
            )
            try:
                s.commit()
                return None
            except IntegrityError:  # another request took the key first: read what it recorded
                s.rollback()
        raise ApiProblem(409, "idempotency_in_progress", "A request with this Idempotency-Key is running.")

    def _record(self, status: int, body: dict, location: str | None) -> None:
        """Complete the key's row with the answer, in the work's own transaction (not committed here)."""
        if self.key is None:
            return
        row = self._row()
        if row is not None:
            row.status_code, row.response = status, body
            row.headers = {"Location": location} if location else {}

    def _commit_work(
        self, work: Callable[[], tuple[dict, str | None]], status: int
    ) -> tuple[dict, str | None]:
        body, location = work()
        self._record(status, body, location)
        self.session.commit()  # the work and its key together
        return body, location

    def _run_after_commit(self) -> None:
        for fn in self._after:
            try:
                fn()
            except Exception:  # noqa: BLE001 -- committed work stands; the scheduler finishes the rest
                log.exception("a step after the commit failed; the scheduler will make up for it")

    async def run(
        self, digest: str, work: Callable[[], tuple[dict, str | None]], *, status: int,
        on_error: Callable[[], None] | None = None,
    ) -> JSONResponse:  # fmt: skip
        """One POST under its key: the original answer when replayed; else ``work()`` (on the thread
        pool; it writes through the session but never commits) -> (the resource, its Location),
        committed with the key's recorded answer, answered with ``status``. On any failure before the
        commit the session is rolled back, the key freed for a retry, then ``on_error()`` cleans up."""
        replay = await run_in_threadpool(self.begin, digest)
        if replay is not None:
            return replay
        try:
            body, location = await run_in_threadpool(self._commit_work, work, status)
        except BaseException:
            await release(
                self._abandon_quietly
            )  # rollback, free the key; off the loop, never behind a full pool
            if on_error is not None:
                await run_in_threadpool(on_error)
            raise
        if self._after:
            await run_in_threadpool(self._run_after_commit)
        return JSONResponse(body, status_code=status, headers={"Location": location} if location else None)

    def _abandon_quietly(self) -> None:
        try:
            self.abandon()
        except Exception:  # noqa: BLE001 -- the database may be what failed: the key then expires unanswered
            log.warning("could not free an idempotency key after a failed request", exc_info=True)

    def abandon(self) -> None:
        self.session.rollback()  # whatever the failed request left pending
        if self.key is not None:
            self.session.execute(
                delete(IdempotencyKey).where(
                    IdempotencyKey.tenant_id == self.tenant_id,
                    IdempotencyKey.key == self.key,
                    IdempotencyKey.status_code.is_(None),
                )
            )
            self.session.commit()


def _aware(t):
    from datetime import UTC

    return t if t.tzinfo else t.replace(tzinfo=UTC)
