"""Operations (API.md "Operations"), without auth and outside /v1: ``/healthz`` (the process answers),
``/readyz`` (database, broker and storage reachable: a load balancer sends traffic only then) and
``/metrics`` (Prometheus text).

Dependency checks run on small thread pools of their own with a time limit each, so a dead or hung
dependency answers 503 in seconds and never ties up the request thread pool; one check per dependency
kind, so a hung storage cannot make the database look down. Metrics live in a registry per app (tests
build many apps in one process); request counts come from the ``RateLimit`` middleware (``observe``),
the rest is read from the database and the broker at each scrape.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, SummaryMetricFamily
from sqlalchemy import case, func, select, text
from starlette.routing import Match
from starlette.types import Scope

from services.api.deps import Platform, PlatformDep
from shared.db.models import Render, Stage, Subject
from shared.db.states import JobState
from shared.queue.stages import QUEUES

log = logging.getLogger(__name__)
router = APIRouter(tags=["operations"])
CHECK_TIMEOUT_S = 3.0
BROKER_TIMEOUT_S = 2.0
CHECKS = ("database", "broker", "storage")
_POOLS = {name: ThreadPoolExecutor(max_workers=2, thread_name_prefix=f"check-{name}") for name in CHECKS}
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


# --- probes -----------------------------------------------------------------------------------------
@router.get("/healthz", summary="The process is alive")
async def healthz() -> dict:
    return {"status": "ok"}


def _database(platform: Platform) -> None:
    with platform.engine.connect() as conn:
        conn.execute(text("SELECT 1"))


def _broker(platform: Platform) -> None:
    with platform.celery.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=BROKER_TIMEOUT_S)


def _storage(platform: Platform) -> None:
    platform.storage.check()


def _summary(exc: BaseException) -> str:
    text_ = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text_}"[:300] if text_ else type(exc).__name__


async def _check(name: str, fn: Callable[[Platform], None], platform: Platform) -> str:
    loop = asyncio.get_running_loop()
    try:
        await asyncio.wait_for(loop.run_in_executor(_POOLS[name], fn, platform), CHECK_TIMEOUT_S)
        return "ok"
    except TimeoutError:
        return f"no answer within {CHECK_TIMEOUT_S:g} s"
    except Exception as exc:  # noqa: BLE001 -- any failure means "not ready", with its reason
        return _summary(exc)


@router.get("/readyz", summary="Database, broker and storage are reachable")
async def readyz(platform: PlatformDep) -> JSONResponse:
    results = await asyncio.gather(
        *(_check(n, f, platform) for n, f in zip(CHECKS, (_database, _broker, _storage), strict=True))
    )
    checks = dict(zip(CHECKS, results, strict=True))
    ready = all(r == "ok" for r in results)
    if not ready:
        log.warning("not ready: %s", {k: v for k, v in checks.items() if v != "ok"})
    return JSONResponse(
        {"status": "ready" if ready else "unavailable", "checks": checks}, status_code=200 if ready else 503
    )


# --- metrics ----------------------------------------------------------------------------------------
class Metrics:
    """One app's registry: request counts and durations, and the platform's state read at scrape time."""

    def __init__(self, platform: Callable[[], Platform]) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "synctalk_http_requests", "HTTP requests by method, route template and status.",
            ["method", "route", "status"], registry=self.registry,
        )  # fmt: skip
        self.seconds = Histogram(
            "synctalk_http_request_seconds", "HTTP request durations (an event stream: its whole life).",
            ["method", "route"], registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
        )  # fmt: skip
        self.registry.register(_PlatformCollector(platform))


_metrics_lock = threading.Lock()


def metrics_of(app) -> Metrics:
    with _metrics_lock:
        metrics = getattr(app.state, "metrics", None)
        if metrics is None:
            metrics = app.state.metrics = Metrics(lambda: app.state.platform)
        return metrics


def route_template(scope: Scope) -> str:
    """The matched route's template (``/v1/renders/{render_id}``), never the raw path: one time series
    per route, whatever ids clients send."""
    route = scope.get("route")
    if route is None and scope.get("app") is not None:  # not routed (a 429): find the route it wanted
        for candidate in scope["app"].router.routes:
            if candidate.matches(scope)[0] is Match.FULL:
                route = candidate
                break
    return getattr(route, "path", None) or "(unmatched)"


def observe(scope: Scope, status: int, seconds: float) -> None:
    """Count one finished request (called by the ``RateLimit`` middleware); never fails the request."""
    app = scope.get("app")
    if app is None or not hasattr(app, "state"):
        return
    try:
        metrics = metrics_of(app)
        method = scope.get("method", "GET") if scope.get("method") in METHODS else "OTHER"
        route = route_template(scope)
        metrics.requests.labels(method, route, str(status)).inc()
        metrics.seconds.labels(method, route).observe(seconds)
    except Exception:  # noqa: BLE001 -- metrics must never break a response
        log.exception("could not record request metrics")


class _PlatformCollector:
    """Queue depths, jobs by status and finished stage durations, read at each scrape."""

    def __init__(self, platform: Callable[[], Platform]) -> None:
        self.platform = platform

    def collect(self) -> Iterator:
        platform = self.platform()
        for part in (_queue_depth, _jobs, _stage_seconds):
            try:
                yield part(platform)
            except Exception as exc:  # noqa: BLE001 -- one unreachable dependency leaves the rest of the scrape
                log.warning("metrics: %s failed: %s", part.__name__.strip("_"), _summary(exc))


def _queue_depth(platform: Platform) -> GaugeMetricFamily:
    def depths() -> dict[str, int]:
        found = {}
        with platform.celery.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=BROKER_TIMEOUT_S)
            for queue in QUEUES:
                channel = conn.channel()
                try:
                    found[queue] = channel.queue_declare(queue=queue, passive=True).message_count
                except Exception:  # noqa: BLE001 -- a queue nothing was ever sent to does not exist yet
                    found[queue] = 0
                finally:
                    channel.close()
        return found

    try:
        counts = _POOLS["broker"].submit(depths).result(timeout=CHECK_TIMEOUT_S)
    except FutureTimeout as exc:
        raise TimeoutError(f"the broker did not answer within {CHECK_TIMEOUT_S:g} s") from exc
    family = GaugeMetricFamily("synctalk_queue_depth", "Tasks waiting in each queue.", labels=["queue"])
    for queue, n in counts.items():
        family.add_metric([queue], n)
    return family


def _jobs(platform: Platform) -> GaugeMetricFamily:
    family = GaugeMetricFamily("synctalk_jobs", "Subjects and renders by status.", labels=["kind", "status"])
    with platform.sessions() as s:
        for kind, model in (("subject", Subject), ("render", Render)):
            counts = dict(s.execute(select(model.status, func.count()).group_by(model.status)).all())
            for state in JobState:
                family.add_metric([kind, state.value], counts.get(state.value, 0))
    return family


def _stage_seconds(platform: Platform) -> SummaryMetricFamily:
    """Durations of succeeded stages (finished_at - started_at, retries included), by job kind."""
    if platform.engine.dialect.name == "sqlite":
        seconds = (func.julianday(Stage.finished_at) - func.julianday(Stage.started_at)) * 86400.0
    else:
        seconds = func.extract("epoch", Stage.finished_at - Stage.started_at)
    kind = case((Stage.subject_id.is_not(None), "subject"), else_="render")
    stmt = (
        select(kind, Stage.name, func.count(), func.sum(seconds))
        .where(
            Stage.status == JobState.succeeded.value,
            Stage.started_at.is_not(None),
            Stage.finished_at.is_not(None),
        )
        .group_by(kind, Stage.name)
    )
    family = SummaryMetricFamily(
        "synctalk_stage_seconds", "Time finished stages took.", labels=["kind", "stage"]
    )
    with platform.sessions() as s:
        for kind_, stage, count, total in s.execute(stmt):
            family.add_metric([kind_, stage], count, float(total or 0.0))
    return family


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
def metrics(request: Request) -> Response:
    registry = metrics_of(request.app).registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
