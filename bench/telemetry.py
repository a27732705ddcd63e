"""What tracing costs an API request: ``GET /v1/subjects/{id}`` (authentication, 3 queries, the JSON)
driven straight through the ASGI app in this process (no sockets, no HTTP client: only the server's
own work is timed), in four modes, interleaved round by round so that drift hits them all alike:

- ``baseline``: no tracing code in the path (the request middleware and the database listeners removed);
- ``off``: as shipped without an endpoint (the middleware passes through, the listeners return at once);
- ``on, sampled out``: an SDK provider sampling 0 % of new traces (ids made, nothing recorded);
- ``on, sampled``: every request recorded (a server span and its database spans) and handed to a
  batch processor whose exporter drops them (the OTLP encoding and the network are the collector's
  side of the bill and are left out; the batch thread's own work is counted).

    python bench/telemetry.py [--requests 2000] [--rounds 5]

Then, with tracing off, what each piece of tracing code adds per call, timed alone (exact where the
request timings above move by tens of microseconds with the machine's load). Record figures in
docs/OBSERVABILITY.md with the machine and `uptime`'s load.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "api"))

from api_helpers import make_api, new_subject  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult  # noqa: E402
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased  # noqa: E402

from services.api.tracing import TraceRequests  # noqa: E402
from shared.telemetry import tracing  # noqa: E402
from shared.telemetry.db import _after, _before, uninstrument_engine  # noqa: E402
from shared.telemetry.storage import _traced  # noqa: E402


class Drop(SpanExporter):
    def __init__(self) -> None:
        self.spans = 0

    def export(self, spans) -> SpanExportResult:
        self.spans += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


def provider(ratio: float) -> tuple[TracerProvider, Drop]:
    drop = Drop()
    made = TracerProvider(sampler=ParentBased(TraceIdRatioBased(ratio)))
    made.add_span_processor(BatchSpanProcessor(drop))
    return made, drop


async def drive(app, path: str, key: str, n: int) -> float:
    """Mean CPU seconds of this process (all its threads: the route's, the batch exporter's) per
    request over ``n`` sequential requests: other processes on the machine do not count."""
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
        "path": path, "raw_path": path.encode(), "root_path": "", "query_string": b"",
        "headers": [(b"host", b"bench"), (b"authorization", f"Bearer {key}".encode())],
        "client": ("127.0.0.1", 5000), "server": ("bench", 80),
    }  # fmt: skip

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    statuses: list[int] = []

    async def send(message):
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    started = time.process_time()
    for _ in range(n):
        await app(dict(scope, headers=list(scope["headers"])), receive, send)
    elapsed = time.process_time() - started
    assert set(statuses) == {200}, set(statuses)
    return elapsed / n


def per_call(fn, n: int = 100_000) -> float:
    """Best of 5 runs of ``n`` calls: microseconds per call (exact where the request timings are noisy)."""
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - started) / n)
    return best * 1e6


def run_once(coroutine) -> None:
    """Run a coroutine that never waits: one step completes it."""
    try:
        coroutine.send(None)
    except StopIteration:
        return


def micro() -> None:
    """What the tracing code adds when tracing is off, piece by piece."""
    tracing._install(None)

    async def inner(scope, receive, send) -> None:
        return None

    middleware = TraceRequests(inner)
    scope = {"type": "http", "path": "/v1/subjects", "method": "GET", "headers": []}

    def through_middleware() -> None:
        run_once(middleware(scope, None, None))

    def direct() -> None:
        run_once(inner(scope, None, None))

    listener = type("Context", (), {})()

    def operation(_self, _key) -> None:  # a storage operation that does nothing: the wrapper alone
        return None

    traced_operation = _traced("exists", operation)

    def query() -> None:  # the before and after listeners of one statement
        _before(None, None, "SELECT 1", None, listener, False)
        _after(None, None, "SELECT 1", None, listener, False)

    middleware_us = per_call(through_middleware) - per_call(direct)
    storage_us = per_call(lambda: traced_operation(None, "a/b")) - per_call(lambda: operation(None, "a/b"))
    print("with tracing off, per call (best of 5 x 100000):")
    print(f"  request middleware          {middleware_us:6.2f} us")
    print(f"  database listeners, a query {per_call(query):6.2f} us")
    print(f"  storage operation wrapper   {storage_us:6.2f} us")


@click.command()
@click.option("--requests", "n", default=2000, show_default=True)
@click.option("--rounds", default=5, show_default=True)
def main(n: int, rounds: int) -> None:
    root = Path(tempfile.mkdtemp(prefix="synctalk-bench-telemetry-"))
    # the rate limits would refuse a bench: lift them
    traced = make_api(root / "traced", rate_limit_per_minute=10**9, rate_limit_ip_per_minute=10**9)
    bare = make_api(root / "bare", rate_limit_per_minute=10**9, rate_limit_ip_per_minute=10**9)
    bare.app.user_middleware = [m for m in bare.app.user_middleware if m.cls is not TraceRequests]
    bare.app.middleware_stack = None
    uninstrument_engine(bare.platform.engine)  # no database listeners: the code before tracing, near enough
    apps = {}
    for api in (traced, bare):
        subject = new_subject(api.platform, api.tenant_id, "Ann")
        apps[api is bare] = (api.app, f"/v1/subjects/{subject}", api.key)
    sampled, sampled_drop = provider(1.0)
    sampled_out, _ = provider(0.0)
    modes = {
        "baseline": (True, None),
        "off": (False, None),
        "on, sampled out": (False, sampled_out),
        "on, sampled": (False, sampled),
    }
    results: dict[str, list[float]] = {m: [] for m in modes}

    async def run() -> None:
        for is_bare, made in modes.values():  # warm every path once
            tracing._install(made)
            await drive(*apps[is_bare], 200)
        order = list(modes.items())
        for _ in range(rounds):
            random.shuffle(order)  # no mode always follows another
            for mode, (is_bare, made) in order:
                tracing._install(made)
                app, path, key = apps[is_bare]
                results[mode].append(await drive(app, path, key, n))
                if made is not None:
                    made.force_flush()
        tracing._install(None)

    asyncio.run(run())
    base = statistics.median(results["baseline"])
    base_min = min(results["baseline"])
    print(f"{n} requests x {rounds} rounds, GET /v1/subjects/{{id}} in-process, CPU per request")
    print(f"  {'':16s} {'median':>8s} {'vs baseline':>20s}   {'best':>8s} {'vs baseline':>11s}")
    for mode, values in results.items():
        median, best = statistics.median(values), min(values)
        print(f"  {mode:16s} {median * 1e6:8.1f} {(median - base) * 1e6:+8.1f} us {(median / base - 1) * 100:+6.1f} %"
              f"   {best * 1e6:8.1f} {(best - base_min) * 1e6:+8.1f} us")  # fmt: skip
    print(f"  spans exported when sampled: {sampled_drop.spans / (rounds * n + 200):.1f} per request")
    micro()
    traced.close()
    bare.close()


if __name__ == "__main__":
    main()
