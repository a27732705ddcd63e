"""Rate limits on /v1 (API.md "Basics"): ``RateLimit`` is a pure ASGI middleware counting requests per
API key in a fixed one-minute window that starts at the key's first request; every /v1 response
carries ``RateLimit-Limit``, ``RateLimit-Remaining`` and ``RateLimit-Reset`` (seconds), and a request
past the limit gets a 429 problem with ``Retry-After`` without reaching the app.

The key is recognised by its public prefix (``PREFIX_LEN`` characters), never with a database call: a
tenant's keys are counted apart. Requests without a key are counted by client address, and so are
refused keys: an address that keeps sending wrong keys is limited before they reach the database.
Counts live in this process's memory: several API processes each apply the limit on their own (a
shared Redis backend is the next step when that matters). The same middleware times every request for
``/metrics`` (it wraps the whole app, so it sees every response).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.api.problems import problem
from services.api.routers.ops import observe  # the request metrics live with /metrics
from shared.db.api_keys import PREFIX_LEN

KEY_MARK = "stk_"  # what our keys start with (shared.db.api_keys.generate_key)


class _Windows:
    """Fixed windows per identity: ``hit`` counts one request and says whether it is allowed."""

    def __init__(self, limit: int, window_s: float) -> None:
        self.limit, self.window_s = limit, window_s
        self._counts: dict[str, tuple[float, int]] = {}  # identity -> (window start, requests in it)
        self._swept = -math.inf

    def _sweep(self, now: float) -> None:
        """Forget windows that are over, once a window: memory stays bounded by the clients of a minute."""
        if now - self._swept >= self.window_s:
            self._counts = {k: v for k, v in self._counts.items() if now - v[0] < self.window_s}
            self._swept = now

    def hit(self, who: str, now: float, *, count: bool = True) -> tuple[bool, int, float]:
        """(allowed, remaining, seconds until the window resets); ``count=False`` only looks."""
        self._sweep(now)
        start, n = self._counts.get(who, (now, 0))
        if now - start >= self.window_s:
            start, n = now, 0
        allowed = n < self.limit
        if allowed and count:
            n += 1
            self._counts[who] = (start, n)
        return allowed, max(0, self.limit - n), max(0.0, start + self.window_s - now)


def _client_ip(scope: Scope) -> str:
    client = scope.get("client")
    return client[0] if client else "unknown"


def _key_prefix(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            scheme, _, key = value.decode("latin-1").partition(" ")
            key = key.strip()
            if scheme.lower() == "bearer" and key.startswith(KEY_MARK) and len(key) > PREFIX_LEN:
                return key[:PREFIX_LEN]
            return None
    return None


class RateLimit:
    """``app.add_middleware(RateLimit, per_minute=N)``; ``clock`` (monotonic seconds) for tests."""

    def __init__(
        self, app: ASGIApp, per_minute: int, *, clock: Callable[[], float] = time.monotonic,
        window_s: float = 60.0,
    ) -> None:  # fmt: skip
        self.app, self.limit, self.clock = app, per_minute, clock
        self._requests = _Windows(per_minute, window_s)
        self._refused = _Windows(per_minute, window_s)  # refused keys (401), by client address
        self._lock = threading.Lock()  # the windows are plain dicts; apps may run in several threads

    def _admit(self, scope: Scope) -> tuple[bool, float, list[tuple[bytes, bytes]], str]:
        prefix, ip = _key_prefix(scope), _client_ip(scope)
        now = self.clock()
        with self._lock:
            if prefix is not None:
                refused_ok, _, refused_reset = self._refused.hit(ip, now, count=False)
                allowed, remaining, reset = self._requests.hit(f"key:{prefix}", now)
                if not refused_ok:  # this address keeps guessing keys: no more database lookups
                    allowed, reset = False, max(reset, refused_reset)
            else:
                allowed, remaining, reset = self._requests.hit(f"ip:{ip}", now)
        headers = [
            (b"ratelimit-limit", str(self.limit).encode()),
            (b"ratelimit-remaining", str(remaining).encode()),
            (b"ratelimit-reset", str(math.ceil(round(reset, 3))).encode()),
        ]
        return allowed, reset, headers, ip

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        path = scope["path"]
        limited = path == "/v1" or path.startswith("/v1/")
        headers: list[tuple[bytes, bytes]] = []
        ip = ""
        status = 500  # what an exception escaping the app becomes
        if limited:
            allowed, reset, headers, ip = self._admit(scope)
            if not allowed:
                retry = str(max(1, math.ceil(round(reset, 3))))
                response = problem(
                    429, "rate_limited",
                    f"More than {self.limit} requests in a minute; retry in {retry} seconds.",
                    {"Retry-After": retry},
                )  # fmt: skip
                response.raw_headers.extend(headers)
                await response(scope, receive, send)
                observe(scope, 429, time.perf_counter() - started)
                return

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if headers:
                    message = {**message, "headers": [*message.get("headers", ()), *headers]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            if limited and status == 401 and _key_prefix(scope) is not None:
                with self._lock:
                    self._refused.hit(ip, self.clock())
            observe(scope, status, time.perf_counter() - started)
