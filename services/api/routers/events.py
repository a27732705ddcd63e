"""``GET /v1/events``: the tenant's job events as Server-Sent Events (API.md "Live progress").

Each message is ``id: <event id>``, ``event: job``, ``data: <the resource as JSON>``. A client resumes
with ``Last-Event-ID`` (or ``?last_event_id=``) and gets exactly the events after it; without one the
stream starts after the newest event at connect time. The event table is polled (short queries in
the thread pool, a bounded batch each); a comment line keeps idle connections (and proxies) open.

A stream lives as long as its key: it checks that the key (for the dashboard, the key its session
was opened with) is still there and not revoked before sending anything it read, and at least every
``api_key_cache_s`` seconds (``KEY_RECHECK_S`` when that is 0) while nothing happens, in the session
of its read: no query of its own per poll. Once the key is revoked the stream ends, and nothing that
happened after the revocation is sent.

Event ids come from a sequence handed out before commit: on Postgres a later id can become visible
before an earlier one. When a batch spans ids not visible yet (another tenant's event, a transaction
still open), the stream waits up to ``GAP_WAIT_S`` for them, so it never skips past an event that is
about to commit. SQLite commits writes one at a time, in id order: no wait there.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse
from sqlalchemy import Select, func, or_, select
from starlette.concurrency import run_in_threadpool

from services.api.deps import CurrentTenant, Platform, PlatformDep, Tenant
from services.api.problems import ApiProblem
from shared.db.models import ApiKey, Event, Render

router = APIRouter(prefix="/v1/events", tags=["events"])
POLL_S = 0.5  # how often the table is read while nothing new arrives
KEEPALIVE_S = 15.0  # a comment line after this much silence
BATCH = 200  # events per query; a full batch is followed by the next at once
GAP_WAIT_S = 2.0  # longest wait for an id below visible ones to commit (Postgres)
RETRY_MS = 2000  # what EventSource waits before reconnecting
KEY_RECHECK_S = 2.0  # how often an idle stream checks its key when keys are not cached (api_key_cache_s 0)


@dataclass(frozen=True)
class Filters:
    tenant_id: str
    subject_id: str | None
    render_id: str | None
    batch_id: str | None

    @property
    def filtered(self) -> bool:
        return bool(self.subject_id or self.render_id or self.batch_id)

    def query(self, after: int, upto: int) -> Select:
        """The matching events with ids in ``(after, upto]``, oldest first, a batch at most."""
        stmt = select(Event.id, Event.data).where(
            Event.tenant_id == self.tenant_id, Event.id > after, Event.id <= upto
        )
        if self.subject_id:  # the subject's own events and its renders'
            renders = select(Render.id).where(
                Render.tenant_id == self.tenant_id, Render.subject_id == self.subject_id
            )
            stmt = stmt.where(
                or_(
                    (Event.resource == "subject") & (Event.resource_id == self.subject_id),
                    (Event.resource == "render") & Event.resource_id.in_(renders),
                )
            )
        if self.render_id:
            stmt = stmt.where(Event.resource == "render", Event.resource_id == self.render_id)
        if self.batch_id:
            batch = select(Render.id).where(
                Render.tenant_id == self.tenant_id, Render.batch_id == self.batch_id
            )
            stmt = stmt.where(Event.resource == "render", Event.resource_id.in_(batch))
        return stmt.order_by(Event.id).limit(BATCH)


def _newest(platform: Platform, tenant_id: str) -> int:
    with platform.sessions() as s:
        return s.scalar(select(func.max(Event.id)).where(Event.tenant_id == tenant_id)) or 0


def _visible(s, after: int, top: int) -> bool:
    """Whether every event id in (after, top] is visible (committed, of any tenant)."""
    seen = s.scalar(select(func.count()).select_from(Event).where(Event.id > after, Event.id <= top))
    return seen == top - after


def _read(platform: Platform, filters: Filters, after: int, check_gaps: bool) -> tuple[list, bool, int]:
    """A batch of events after ``after``; whether every id in its span is visible yet; and how far the
    stream may skip when nothing matched its filters (so a filtered stream does not read the same
    unmatched events again at every poll)."""
    with platform.sessions() as s:
        return _read_in(s, filters, after, check_gaps)


def _read_in(s, filters: Filters, after: int, check_gaps: bool) -> tuple[list, bool, int]:
    """``_read`` in a session. The tenant's newest id is read *before* the filtered query and bounds it:
    each statement sees the table as of its own start, so reading the top last could take in an event
    that committed between the two, one the filtered query never saw, and skip past it."""
    top = s.scalar(select(func.max(Event.id)).where(Event.tenant_id == filters.tenant_id, Event.id > after))
    if top is None:
        return [], True, after
    rows = s.execute(filters.query(after, top)).all()
    if rows:
        return rows, not check_gaps or _visible(s, after, rows[-1][0]), after
    if not filters.filtered or (check_gaps and not _visible(s, after, top)):
        return rows, True, after
    return rows, True, top


def _key_live(s, tenant: Tenant) -> bool:
    """The key the stream was opened with still exists, is the tenant's, and is not revoked."""
    row = s.execute(
        select(ApiKey.revoked_at).where(ApiKey.prefix == tenant.key_prefix, ApiKey.tenant_id == tenant.id)
    ).first()
    return row is not None and row.revoked_at is None


def _read_checked(
    platform: Platform, tenant: Tenant, filters: Filters, after: int, check_gaps: bool, check_key: bool
) -> tuple[list, bool, int, bool]:
    """``_read``, then whether the key is still live, checked after the read in the same session when
    there is something to send (so nothing read after a revocation is sent) or when ``check_key``."""
    with platform.sessions() as s:
        rows, complete, skip_to = _read_in(s, filters, after, check_gaps)
        live = _key_live(s, tenant) if rows or check_key else True
        return rows, complete, skip_to, live


def message(event_id: int, data: Any) -> str:
    return f"id: {event_id}\nevent: job\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def key_recheck_s(platform: Platform) -> float:
    """How often an idle stream checks its key: as often as a request would (``api_key_cache_s``)."""
    cache_s = platform.settings.api_key_cache_s
    return cache_s if cache_s > 0 else KEY_RECHECK_S


async def stream(
    request: Request, platform: Platform, tenant: Tenant, filters: Filters, after: int
) -> AsyncIterator[str]:
    check_gaps = platform.engine.dialect.name != "sqlite"
    recheck_s = key_recheck_s(platform)
    yield f"retry: {RETRY_MS}\n\n"
    last_sent = last_checked = time.monotonic()
    gap_since: float | None = None
    while not await request.is_disconnected():
        check_key = time.monotonic() - last_checked >= recheck_s
        rows, complete, skip_to, live = await run_in_threadpool(
            _read_checked, platform, tenant, filters, after, check_gaps, check_key
        )
        now = time.monotonic()
        if not live:
            yield ": the API key was revoked\n\n"
            return  # the client's reconnection gets a 401
        if rows or check_key:
            last_checked = now
        if rows and not complete:
            gap_since = gap_since or now
            if now - gap_since < GAP_WAIT_S:
                rows = []  # an earlier id may still commit: wait for it (a rolled-back one never will)
        if rows:
            gap_since = None
            for event_id, data in rows:
                yield message(event_id, data)
            after, last_sent = rows[-1][0], now
            if len(rows) == BATCH:
                continue  # more are waiting
        else:
            after = max(after, skip_to)
            if now - last_sent >= KEEPALIVE_S:
                yield ": keep-alive\n\n"
                last_sent = now
        await asyncio.sleep(POLL_S)


@router.get(
    "",
    summary="Live job events (Server-Sent Events)",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def events(
    request: Request,
    platform: PlatformDep,
    tenant: CurrentTenant,
    subject_id: Annotated[str | None, Query(description="A subject's events and its renders'.")] = None,
    render_id: Annotated[str | None, Query(description="One render's events.")] = None,
    batch_id: Annotated[str | None, Query(description="The events of a batch's renders.")] = None,
    last_event_id: Annotated[str | None, Query(description="Resume after this event id.")] = None,
    last_event_header: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> StreamingResponse:
    """One ``event: job`` message per state, stage or progress change of the tenant's jobs, its data the
    resource as ``GET`` shows it. Resume with the ``Last-Event-ID`` header (EventSource sends it). The
    stream ends when its API key is revoked."""
    resume = last_event_header or last_event_id
    if resume is not None and resume.strip():
        try:
            after = int(resume)
            if after < 0:
                raise ValueError
        except ValueError as exc:
            raise ApiProblem(
                422, "invalid_request", f"Last-Event-ID must be an event id from this stream, not {resume!r}."
            ) from exc
    else:
        after = await run_in_threadpool(_newest, platform, tenant.id)
    filters = Filters(tenant.id, subject_id, render_id, batch_id)
    return StreamingResponse(
        stream(request, platform, tenant, filters, after),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
