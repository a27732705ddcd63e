"""Rate limits (API.md "Basics"), in fixed one-minute windows, at two levels:

- **per client address, before anything else**: every request on every route (``/v1``, the dashboard
  and its API, storage's signed URLs, the operations routes) counts against its address,
  ``rate_limit_ip_per_minute``. Refused keys count like any other request, so guessing keys is bounded
  per address, and bad keys can never spend a tenant's budget;
- **per tenant, after authentication**: ``charge_tenant``, called by the tenant dependencies (an API
  key, ``services/api/deps.py``; a dashboard session, ``services/dashboard/api.py``), counts the
  request against its tenant, ``rate_limit_per_minute``, whatever key or session it came with.

The ``RateLimit`` middleware does the first and puts the ``Limiter`` in the request's state for the
second. Every ``/v1`` (and ``/dashboard/api``) response carries ``RateLimit-Limit``,
``RateLimit-Remaining`` and ``RateLimit-Reset`` (seconds) of the tenant's window, or of the address's
when no tenant was identified (a 401, a path no route serves). Past a limit: a 429 problem with
``Retry-After``.

The client address is the connection's peer unless the peer is a trusted proxy
(``trusted_proxies``); then it is the right-most ``X-Forwarded-For`` entry that is not one. Counts live
in Redis (``rate_limit_redis_url``, else the broker when it is Redis), shared by every API process,
or in this process's memory (the embedded default). A Redis that fails or is slow lets requests
through uncounted (fail open, a warning a minute): the limiter never turns into an outage.

The same middleware times every request for ``/metrics`` (it wraps the whole app).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.api.problems import ApiProblem, problem
from shared.settings import Settings

log = logging.getLogger(__name__)
WINDOW_S = 60
REDIS_TIMEOUT_S = 0.25  # per connect and per reply: a slow Redis costs a request at most this twice
REDIS_PAUSE_S = 5.0  # after a Redis failure, requests skip it (uncounted) this long
WARN_EVERY_S = 60.0
REDIS_PREFIX = "synctalk:ratelimit:"
LIMITER = "ratelimit_limiter"  # keys of the request's state (scope["state"])
TENANT_DECISION = "ratelimit_tenant"
HEADER_PATHS = ("/v1", "/dashboard/api")  # responses under these carry the RateLimit-* headers

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    reset_s: int  # seconds until the window ends

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [
            (b"ratelimit-limit", str(self.limit).encode()),
            (b"ratelimit-remaining", str(self.remaining).encode()),
            (b"ratelimit-reset", str(self.reset_s).encode()),
        ]


# --- where counts live ------------------------------------------------------------------------------
class MemoryCounts:
    """Counts in this process: each API process applies the limits on its own (the embedded default)."""

    def __init__(self) -> None:
        self._window: int | None = None
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()  # apps may run on several threads (TestClient, sync routes)

    async def incr(self, name: str, window: int) -> int:
        """This request's number in ``name``'s window ``window``."""
        with self._lock:
            if window != self._window:  # every window ends at once: memory holds one minute's clients
                self._window, self._counts = window, {}
            self._counts[name] = n = self._counts.get(name, 0) + 1
            return n


class RedisCounts:
    """Counts in Redis, shared by every API process: one INCR and EXPIRE per request, in one round trip.

    An asyncio connection belongs to the event loop that opened it, so there is one client per loop
    (one in production; tests run apps on several)."""

    def __init__(self, url: str, prefix: str = REDIS_PREFIX, timeout_s: float = REDIS_TIMEOUT_S) -> None:
        self.url, self.prefix, self.timeout_s = url, prefix, timeout_s
        self._clients: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def _client(self):
        import redis.asyncio
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        loop = asyncio.get_running_loop()
        with self._lock:
            client = self._clients.get(loop)
            if client is None:
                client = self._clients[loop] = redis.asyncio.Redis.from_url(
                    self.url, socket_timeout=self.timeout_s, socket_connect_timeout=self.timeout_s,
                    retry=Retry(NoBackoff(), 0),  # no retries: a request must not wait on a dead Redis
                )  # fmt: skip
            return client

    async def incr(self, name: str, window: int) -> int:
        key = f"{self.prefix}{name}:{window}"
        async with self._client().pipeline(transaction=True) as pipe:
            pipe.incr(key)
            pipe.expire(key, 2 * WINDOW_S)  # the window's key outlives it a little, then goes
            count, _ = await pipe.execute()
        return int(count)


# --- who the client is ------------------------------------------------------------------------------
def parse_networks(text: str) -> tuple[Network, ...]:
    """``trusted_proxies``: comma-separated addresses or CIDR networks; ValueError names a bad entry."""
    networks = []
    for entry in (e.strip() for e in text.split(",")):
        if entry:
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError as exc:
                raise ValueError(f"trusted_proxies: {entry!r} is not an address or a network") from exc
    return tuple(networks)


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = text.strip()
    if text.startswith("["):  # [v6] or [v6]:port
        text = text[1 : text.find("]")] if "]" in text else text
    elif text.count(":") == 1:  # v4:port
        text = text.split(":")[0]
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    mapped = getattr(ip, "ipv4_mapped", None)
    return mapped or ip


def _trusted(ip, trusted: tuple[Network, ...]) -> bool:
    return ip is not None and any(ip.version == net.version and ip in net for net in trusted)


def _identity(ip, raw: str) -> str:
    """What a client is counted as: its IPv4 address, or its IPv6 /64 (one subscriber's network: a
    client choosing among its 2**64 addresses must not get a budget for each)."""
    if ip is None:
        return raw or "unknown"
    if ip.version == 6:
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def client_address(scope: Scope, trusted: tuple[Network, ...]) -> str:
    """The client as the rate limits count it. ``X-Forwarded-For`` is read only when the connection
    comes from a trusted proxy: then the right-most entry that is not a trusted proxy itself (the
    entries to its left were written by the client and prove nothing); all trusted: the left-most. An
    entry that is not an address ends the walk and the request counts against the proxy."""
    peer_text = (scope.get("client") or ("",))[0] or ""
    peer = _address(peer_text)
    if not _trusted(peer, trusted):
        return _identity(peer, peer_text)
    entries = [
        e.strip()
        for name, value in scope.get("headers", ())
        if name == b"x-forwarded-for"
        for e in value.decode("latin-1").split(",")
        if e.strip()
    ]
    for entry in reversed(entries):
        ip = _address(entry)
        if ip is None:  # not an address: nothing at or left of it can be believed
            return _identity(peer, peer_text)
        if not _trusted(ip, trusted):
            return _identity(ip, entry)
    if entries:  # every hop is a trusted proxy: the first one is the client
        return _identity(_address(entries[0]), entries[0])
    return _identity(peer, peer_text)


# --- the limits -------------------------------------------------------------------------------------
class Limiter:
    """The two budgets and where their counts live. ``clock``: wall-clock seconds (windows are aligned
    on it, so every process agrees when a window ends)."""

    def __init__(
        self, *, per_tenant: int, per_address: int, counts: MemoryCounts | RedisCounts,
        trusted_proxies: Iterable[Network] = (), clock: Callable[[], float] = time.time,
    ) -> None:  # fmt: skip
        self.per_tenant, self.per_address, self.counts = per_tenant, per_address, counts
        self.trusted_proxies = tuple(trusted_proxies)
        self.clock = clock
        self._paused_until = 0.0  # monotonic: the counts' store failed, skip it until then
        self._warned_at = -math.inf

    def client(self, scope: Scope) -> str:
        return client_address(scope, self.trusted_proxies)

    async def address(self, address: str) -> Decision:
        return await self._hit(f"ip:{address}", self.per_address)

    async def tenant(self, tenant_id: str) -> Decision:
        return await self._hit(f"tenant:{tenant_id}", self.per_tenant)

    async def _hit(self, name: str, limit: int) -> Decision:
        now = self.clock()
        window = int(now // WINDOW_S)
        reset = max(1, math.ceil(round((window + 1) * WINDOW_S - now, 3)))
        if time.monotonic() < self._paused_until:
            return Decision(True, limit, limit, reset)
        try:
            count = await self.counts.incr(name, window)
        except Exception as exc:  # noqa: BLE001 -- fail open: the limiter must never fail a request
            self._failed(exc)
            return Decision(True, limit, limit, reset)
        return Decision(count <= limit, limit, max(0, limit - count), reset)

    def _failed(self, exc: Exception) -> None:
        now = time.monotonic()
        self._paused_until = now + REDIS_PAUSE_S
        if now - self._warned_at >= WARN_EVERY_S:
            self._warned_at = now
            log.warning(
                "rate limits: the counts' store failed (%s: %s); requests pass uncounted for %g s at a time",
                type(exc).__name__, exc, REDIS_PAUSE_S,
            )  # fmt: skip


def limiter_from_settings(settings: Settings) -> Limiter:
    """Counts in ``rate_limit_redis_url``, else in the broker when it is Redis, else in memory."""
    broker = settings.resolved_broker_url
    url = settings.rate_limit_redis_url or (broker if broker.startswith(("redis://", "rediss://")) else "")
    return Limiter(
        per_tenant=settings.rate_limit_per_minute,
        per_address=settings.rate_limit_ip_per_minute,
        counts=RedisCounts(url) if url else MemoryCounts(),
        trusted_proxies=parse_networks(settings.trusted_proxies),
    )


def _too_many(decision: Decision, whose: str) -> tuple[str, dict[str, str]]:
    retry = str(decision.reset_s)
    return (
        f"More than {decision.limit} requests in a minute {whose}; retry in {retry} seconds.",
        {"Retry-After": retry},
    )


async def charge_tenant(request: Request, tenant_id: str) -> None:
    """Count this request against its tenant, once it is authenticated; a 429 problem past the limit.
    Nothing is counted in an app without the ``RateLimit`` middleware."""
    state = request.scope.setdefault("state", {})
    limiter: Limiter | None = state.get(LIMITER)
    if limiter is None or TENANT_DECISION in state:
        return
    decision = state[TENANT_DECISION] = await limiter.tenant(tenant_id)
    if not decision.allowed:
        raise ApiProblem(429, "rate_limited", *_too_many(decision, "for this account"))


def _carries_headers(path: str) -> bool:
    return any(path == p or path.startswith(p + "/") for p in HEADER_PATHS)


class RateLimit:
    """``app.add_middleware(RateLimit, limiter=..., observe=...)``: counts every request against its
    client address and answers 429 past the limit without calling the app; adds the RateLimit-*
    headers; calls ``observe(scope, status, seconds)`` for each finished request (the metrics)."""

    def __init__(
        self, app: ASGIApp, limiter: Limiter, observe: Callable[[Scope, int, float], None] | None = None
    ) -> None:
        self.app, self.limiter, self.observe = app, limiter, observe

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        state = scope.setdefault("state", {})
        state[LIMITER] = self.limiter  # for charge_tenant, once the tenant is known
        by_address = await self.limiter.address(self.limiter.client(scope))
        if not by_address.allowed:
            response = problem(429, "rate_limited", *_too_many(by_address, "from your address"))
            response.raw_headers.extend(by_address.headers())
            await response(scope, receive, send)
            self._observe(scope, 429, started)
            return
        with_headers = _carries_headers(scope["path"])
        status = 500  # what an exception escaping the app becomes

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if with_headers:  # the tenant's window once it is known, else the address's
                    shown = state.get(TENANT_DECISION) or by_address
                    message = {**message, "headers": [*message.get("headers", ()), *shown.headers()]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            self._observe(scope, status, started)

    def _observe(self, scope: Scope, status: int, started: float) -> None:
        if self.observe is not None:
            self.observe(scope, status, time.perf_counter() - started)
