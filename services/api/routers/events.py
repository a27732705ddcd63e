"""``GET /v1/events``: the tenant's job events as Server-Sent Events (API.md "Live progress").

Each message is ``id: <event id>``, ``event: job``, ``data: <the resource as JSON>``. A client resumes
with ``Last-Event-ID`` (or ``?last_event_id=``) and gets exactly the events after it; without one the
stream starts after the newest event at connect time; a comment line keeps idle connections (and
proxies) open.

The API process reads the event table once for all its streams (``services/api/event_hub.py``: one
poll every half second, events kept in memory, filters matched there); a stream resuming from further
back than the hub remembers reads the database itself, a bounded batch at a time, until it has caught
up. Either way it never skips an event about to commit (PostgreSQL hands ids out before commit: a gap
is waited for up to ``GAP_WAIT_S``), and it lives as long as its key: the key (for the dashboard, the
key its session was opened with) is checked after each read and at least every ``api_key_cache_s``
seconds; once it is revoked the stream ends, and nothing that happened after the revocation is sent.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse
from sqlalchemy import func, select
from starlette.concurrency import run_in_threadpool

from services.api import event_hub
from services.api.deps import CurrentTenant, Platform, PlatformDep, Tenant
from services.api.event_hub import BATCH, Filters
from services.api.problems import ApiProblem
from shared.db.models import ApiKey, Event

router = APIRouter(prefix="/v1/events", tags=["events"])
POLL_S = 0.5  # how often a stream catching up from the database reads it
KEEPALIVE_S = 15.0  # a comment line after this much silence
GAP_WAIT_S = 2.0  # longest wait for an id below visible ones to commit (Postgres), catching up
WAKE_S = 1.0  # a stream looks at least this often (a disconnected client, a keep-alive due)
RETRY_MS = 2000  # what EventSource waits before reconnecting
KEY_RECHECK_S = 2.0  # how often an idle stream checks its key when keys are not cached (api_key_cache_s 0)


def _newest(platform: Platform) -> int:
    """Where a new stream starts: after the newest event (of any tenant: none of its own comes between)."""
    with platform.sessions() as s:
        return s.scalar(select(func.max(Event.id))) or 0


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
    hub = event_hub.hub_of(platform)
    yield f"retry: {RETRY_MS}\n\n"
    async with hub.subscribed(tenant.id, tenant.key_prefix):
        caught_up = False
        catching_up = _catch_up(request, platform, tenant, filters, after)
        async for item in catching_up:  # from the database, while the hub does not hold what follows
            if isinstance(item, int):
                after, caught_up = item, True
                break
            yield item
        if not caught_up:
            return
        last_sent = time.monotonic()
        while not await request.is_disconnected():
            if not hub.key_live(tenant.id, tenant.key_prefix):
                yield ": the API key was revoked\n\n"
                return  # the client's reconnection gets a 401
            if not hub.ready(after):  # it fell behind the hub's memory (a slow client): read the database
                async for item in _catch_up(request, platform, tenant, filters, after):
                    if isinstance(item, int):
                        after = item
                        break
                    yield item
                else:
                    return
                continue
            rows, top = hub.matching(after, filters)
            for e in rows:
                yield message(e.id, e.data)
            after = max(after, top)
            now = time.monotonic()
            if rows:
                last_sent = now
            elif now - last_sent >= KEEPALIVE_S:
                yield ": keep-alive\n\n"
                last_sent = now
            await hub.wait(WAKE_S)


async def _catch_up(
    request: Request, platform: Platform, tenant: Tenant, filters: Filters, after: int
) -> AsyncIterator[str | int]:
    """A stream's own database reads, while the events after ``after`` are not all in the hub's memory:
    messages, then (as the last item) the id from which the hub holds the rest. Ends without that when
    the client left or the key was revoked."""
    hub = event_hub.hub_of(platform)
    check_gaps = platform.engine.dialect.name != "sqlite"
    recheck_s = key_recheck_s(platform)
    last_sent = last_checked = time.monotonic()
    gap_since: float | None = None
    while not await request.is_disconnected():
        if hub.ready(after):
            yield after
            return
        check_key = time.monotonic() - last_checked >= recheck_s
        rows, complete, skip_to, live = await run_in_threadpool(
            _read_checked, platform, tenant, filters, after, check_gaps, check_key
        )
        now = time.monotonic()
        if not live:
            yield ": the API key was revoked\n\n"
            return
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
            if skip_to == after and hub.floor is not None:
                # nothing of the tenant's is visible beyond ``after``: what comes next, the hub holds
                # (it starts a thousand ids back, so ids still committing below its start are its too)
                skip_to = max(after, hub.floor)
            after = max(after, skip_to)
            if now - last_sent >= KEEPALIVE_S:
                yield ": keep-alive\n\n"
                last_sent = now
            if hub.ready(after):
                continue
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
        after = await run_in_threadpool(_newest, platform)
    for value in (subject_id, render_id, batch_id):
        if value is not None and ("\x00" in value or len(value) > 64):
            raise ApiProblem(422, "invalid_request", "subject_id, render_id and batch_id must be ids.")
    filters = Filters(tenant.id, subject_id, render_id, batch_id)
    return StreamingResponse(
        stream(request, platform, tenant, filters, after),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
