"""One reader of the event table per API process, for every open event stream.

Each stream used to poll the table itself, twice a second: 500 open streams were 1,000 queries a
second and most of a core, before a single event (bench/load.py). The hub polls once for all of them:
every ``POLL_S`` it reads the new events of every tenant (one query), then the liveness of the keys
its streams were opened with (one more, only when something changed or ``key_recheck_s`` passed),
keeps the recent events in memory, and wakes the streams; each stream picks its tenant's events that
match its filters from memory. A stream resuming from further back than the hub's memory reads the
database itself until it has caught up (``routers/events.py``).

Two promises of the stream are kept here, once for all:
- never skip an event about to commit: on PostgreSQL ids are handed out before commit, so a later id
  can be visible before an earlier one. The hub never moves past a missing id until it appeared or
  ``GAP_WAIT_S`` passed (a rolled-back id never appears). SQLite commits in id order: no wait there;
- nothing read after a key was revoked is sent: the keys are checked in the same session *after* the
  events were read, and a stream gets events only while its key was live at that check.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, func, or_, select

from shared.db.models import ApiKey, Event, Render

POLL_S = 0.5  # how often the table is read
GAP_WAIT_S = 2.0  # longest wait for an id below visible ones to commit (PostgreSQL)
HUB_BATCH = 1000  # events read per poll (more wait for the next poll)
BATCH = 200  # events per query of a stream catching up
START_BACK = 1000  # the hub starts this many ids before the newest
KEEP = 20_000  # events kept in memory (up to twice that); a stream further behind reads the database


_POLLER = ThreadPoolExecutor(max_workers=2, thread_name_prefix="event-hub")


@dataclass(frozen=True)
class HubEvent:
    id: int
    tenant_id: str
    resource: str
    resource_id: str
    data: dict[str, Any]


@dataclass(frozen=True)
class Filters:
    """Which of a tenant's events a stream wants: read from the database (``query``, a stream catching
    up), or picked from the hub's memory (``matches``, by the event's own document)."""

    tenant_id: str
    subject_id: str | None = None
    render_id: str | None = None
    batch_id: str | None = None

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

    def matches(self, e: HubEvent) -> bool:
        if e.tenant_id != self.tenant_id:
            return False
        if self.render_id and (e.resource != "render" or e.resource_id != self.render_id):
            return False
        if self.batch_id and (e.resource != "render" or e.data.get("batch_id") != self.batch_id):
            return False
        if self.subject_id:  # the subject's own events and its renders'
            own = e.resource == "subject" and e.resource_id == self.subject_id
            if not own and not (e.resource == "render" and e.data.get("subject_id") == self.subject_id):
                return False
        return True


class EventHub:
    """Create one per platform (``hub_of``); streams ``async with hub.subscribed(key)`` then read."""

    def __init__(self, sessions, *, check_gaps: bool, key_recheck_s: float) -> None:
        self.sessions, self.check_gaps, self.key_recheck_s = sessions, check_gaps, key_recheck_s
        self.events: list[HubEvent] = []  # in id order
        self._ids: list[int] = []  # their ids, for bisect
        self.cursor: int | None = None  # every id up to here was read (or given up on)
        self.floor: int | None = None  # events after this are all in memory
        self.keys: dict[tuple[str, str], bool] = {}  # (tenant, key prefix) -> live at the last check
        self._subscribers: dict[tuple[str, str], int] = {}
        self._keys_checked = 0.0
        self._gap_since: float | None = None
        self._changed: asyncio.Event | None = None  # set, then replaced, after each poll that changed
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task | None = None

    # --- streams' side ------------------------------------------------------------------------------
    def subscribed(self, tenant_id: str, key_prefix: str) -> _Subscription:
        return _Subscription(self, (tenant_id, key_prefix))

    def ready(self, after: int) -> bool:
        """Whether the events after ``after`` are all in memory (else: read the database)."""
        return self.floor is not None and after >= self.floor

    def key_live(self, tenant_id: str, key_prefix: str) -> bool:
        return self.keys.get((tenant_id, key_prefix), True)

    def matching(self, after: int, filters: Filters) -> tuple[list[HubEvent], int]:
        """The stream's events after ``after`` in memory, and how far it may skip (the hub's cursor)."""
        top = self.cursor or after
        if after >= top:
            return [], after
        start = bisect.bisect_right(self._ids, after)
        return [e for e in self.events[start:] if e.id <= top and filters.matches(e)], top

    async def wait(self, timeout: float) -> None:
        """Until the next poll brings something (or ``timeout``)."""
        assert self._changed is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout)

    # --- the poller ---------------------------------------------------------------------------------
    def _start(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # a new event loop (an app served again): new primitives
            self._loop, self._changed, self._task = loop, asyncio.Event(), None
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while self._subscribers:
            # a thread of its own: behind a busy request pool, every stream would wait with the poll
            read = await loop.run_in_executor(_POLLER, self._poll)
            if self._apply(*read):  # on the loop's thread: the streams never see a half-applied poll
                woken, self._changed = self._changed, asyncio.Event()
                woken.set()
            await asyncio.sleep(POLL_S)

    def _poll(self) -> tuple[int | None, list, dict | None]:
        """Read what is new: (the newest id when (re)starting, the events to take, the keys' liveness
        when they were checked). Runs on a thread; changes nothing."""
        with self.sessions() as s:
            start = None
            cursor = self.cursor
            if self.floor is None:  # (re)starting: a thousand ids back from the newest, so that ids handed
                # out before but still committing are not lost (the gap check waits for them)
                cursor = start = max(0, (s.scalar(select(func.max(Event.id))) or 0) - START_BACK)
            rows = s.execute(
                select(Event.id, Event.tenant_id, Event.resource, Event.resource_id, Event.data)
                .where(Event.id > cursor)
                .order_by(Event.id)
                .limit(HUB_BATCH)
            ).all()
            taken = self._contiguous(rows, cursor)
            check = bool(taken) or time.monotonic() - self._keys_checked >= self.key_recheck_s
            return start, taken, self._read_keys(s) if check else None

    def _apply(self, start: int | None, taken: list, keys: dict | None) -> bool:
        """Take a poll's results in; True when streams should look again."""
        if start is not None:
            self.events, self._ids, self.cursor, self.floor = [], [], start, start
        self.events += [HubEvent(*row) for row in taken]
        self._ids += [row[0] for row in taken]
        if len(self.events) > 2 * KEEP:  # the oldest leave memory
            self.floor = self._ids[-KEEP - 1]
            self.events, self._ids = self.events[-KEEP:], self._ids[-KEEP:]
        if taken:
            self.cursor = taken[-1][0]
        changed = False
        if keys is not None:
            self._keys_checked = time.monotonic()
            changed = any(self.keys.get(k, True) != v for k, v in keys.items())
            self.keys.update(keys)
        return bool(taken) or changed

    def _contiguous(self, rows: list, cursor: int) -> list:
        """The rows up to the first missing id, unless it has been missing for ``GAP_WAIT_S``."""
        if not self.check_gaps:
            return rows
        for i, row in enumerate(rows):
            if row[0] != cursor + 1 + i:  # an id below this one is not visible yet
                self._gap_since = self._gap_since or time.monotonic()
                if time.monotonic() - self._gap_since < GAP_WAIT_S:
                    return rows[:i]
                self._gap_since = None  # rolled back, surely: move on
                return rows
        self._gap_since = None
        return rows

    def _read_keys(self, s) -> dict[tuple[str, str], bool]:
        """Whether each subscribed key is live, read after the events (nothing read after a revocation
        reaches a stream of that key)."""
        wanted = list(self._subscribers)
        if not wanted:
            return {}
        found = {
            (tenant, prefix): revoked is None
            for prefix, tenant, revoked in s.execute(
                select(ApiKey.prefix, ApiKey.tenant_id, ApiKey.revoked_at).where(
                    ApiKey.prefix.in_({prefix for _, prefix in wanted})
                )
            )
        }
        return {k: found.get(k, False) for k in wanted}


class _Subscription:
    def __init__(self, hub: EventHub, key: tuple[str, str]) -> None:
        self.hub, self.key = hub, key

    async def __aenter__(self) -> EventHub:
        hub = self.hub
        hub._subscribers[self.key] = hub._subscribers.get(self.key, 0) + 1
        hub._start()
        return hub

    async def __aexit__(self, *exc) -> None:
        hub = self.hub
        n = hub._subscribers.get(self.key, 0) - 1
        if n > 0:
            hub._subscribers[self.key] = n
        else:
            hub._subscribers.pop(self.key, None)
            hub.keys.pop(self.key, None)
        if not hub._subscribers:  # nobody listens: the poller stops, and memory starts afresh next time
            hub.events, hub._ids = [], []
            hub.cursor = hub.floor = None


def hub_of(platform) -> EventHub:
    """The platform's hub (one per API process; the dashboard's streams share it)."""
    hub = getattr(platform, "event_hub", None)
    if hub is None:
        cache_s = platform.settings.api_key_cache_s
        hub = platform.event_hub = EventHub(
            platform.sessions, check_gaps=platform.engine.dialect.name != "sqlite",
            key_recheck_s=cache_s if cache_s > 0 else 2.0,
        )  # fmt: skip
    return hub
