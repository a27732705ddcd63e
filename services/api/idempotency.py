"""``Idempotency-Key`` on every POST (API.md): the same key with the same request returns the original
response (same resource id); the same key with another request is a 409. Keys live 24 hours.

The first request with a key inserts a placeholder row and commits it (the unique constraint decides
between two racing requests); it is completed with the response, or removed when the request fails, so a
retry after an error runs again. Everything goes through the request's own session, committed before
the request's work starts: a request never holds two pooled connections at once (with many concurrent
POSTs, a second connection waited for while holding the first exhausted the pool: measured).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from fastapi.responses import JSONResponse
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from services.api.deps import release
from services.api.problems import ApiProblem
from shared.db.models import IdempotencyKey, utcnow

KEEP = timedelta(hours=24)
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
        for _ in range(2):
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

    def complete(self, response: JSONResponse, body: dict) -> JSONResponse:
        if self.key is not None:
            row = self._row()
            if row is not None:
                headers = {k: v for k, v in response.headers.items() if k.lower() == "location"}
                row.status_code, row.response, row.headers = response.status_code, body, headers
                self.session.commit()
        return response

    async def run(
        self, digest: str, work: Callable[[], tuple[dict, str | None]], *, status: int,
        on_error: Callable[[], None] | None = None,
    ) -> JSONResponse:  # fmt: skip
        """One POST under its key: the original answer when replayed; else ``work()`` (on the thread
        pool) -> (the resource, its Location), answered with ``status`` and recorded. On any failure the
        session is rolled back, the key freed for a retry, then ``on_error()`` cleans up."""
        replay = await run_in_threadpool(self.begin, digest)
        if replay is not None:
            return replay
        try:
            body, location = await run_in_threadpool(work)
        except BaseException:
            await release(self.abandon)  # rollback and free the key, off the loop, never behind a full pool
            if on_error is not None:
                await run_in_threadpool(on_error)
            raise
        response = JSONResponse(
            body, status_code=status, headers={"Location": location} if location else None
        )
        return await run_in_threadpool(self.complete, response, body)

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
