"""Operations (API.md "Operations"), outside /v1: ``/healthz`` (the process answers), ``/readyz``
(database, broker and storage reachable: a load balancer sends traffic only then) and ``/metrics``
(Prometheus text).

Dependency checks run on small thread pools of their own with a time limit each, so a dead or hung
dependency answers 503 in seconds and never ties up the request thread pool; one check per dependency
kind, so a hung storage cannot make the database look down. Request metrics live in a registry per
app (tests build many apps in one process), counted by the ``RateLimit`` middleware (``observe``);
queue depths and job figures are read from the broker and the database at each scrape.

Behind ``synctalk api --workers N`` each process counts its own requests into a folder they share
(``PROMETHEUS_MULTIPROC_DIR``, prometheus_client's multi-process mode, set up by
services/api/metrics_dir.py before the processes start): a scrape answered by any one of them shows
the requests of all.

``/metrics`` shows what its caller may see: without credentials, request metrics and queue depths
only; with ``Authorization: Bearer <metrics_token>``, also every tenant's jobs by status and the
stage durations; with a tenant's API key, also that tenant's own jobs by status.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, SummaryMetricFamily
from sqlalchemy import case, func, select, text
from starlette.routing import Match
from starlette.types import Scope

from services.api.deps import Platform, PlatformDep, _find_key
from services.api.metrics_dir import MULTIPROC_ENV
from services.api.problems import ApiProblem
from shared.db.api_keys import hash_key
from shared.db.models import Render, Stage, Subject
from shared.db.states import JobState
from shared.queue.app import queue_depths

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
    """One app's request counts and durations."""

    def __init__(self) -> None:
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


_metrics_lock = threading.Lock()


def request_metrics(app) -> bytes:
    """This app's request metrics, or every API process's when they share a folder."""
    folder = os.environ.get(MULTIPROC_ENV)  # set by services/api/metrics_dir.py before the import
    if folder:
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=folder)
        metrics_of(app)  # this process's series exist (at 0) even before its first request
        return generate_latest(registry)
    return generate_latest(metrics_of(app).registry)


def metrics_of(app) -> Metrics:
    with _metrics_lock:
        metrics = getattr(app.state, "metrics", None)
        if metrics is None:
            metrics = app.state.metrics = Metrics()
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


@dataclass(frozen=True)
class Audience:
    """Who scrapes: anyone (``public``), the platform's operators (``everything``), or one tenant."""

    everything: bool = False
    tenant_id: str | None = None


class _StateCollector:
    """Queue depths, and the job figures the audience may see, read at the scrape."""

    def __init__(self, platform: Platform, audience: Audience) -> None:
        self.platform, self.audience = platform, audience

    def collect(self) -> Iterator:
        parts: list[Callable[[], object]] = [lambda: _queue_depth(self.platform)]
        if self.audience.everything:
            parts += [lambda: _jobs(self.platform), lambda: _stage_seconds(self.platform)]
        elif self.audience.tenant_id is not None:
            parts.append(lambda: _jobs(self.platform, self.audience.tenant_id))
        for part in parts:
            try:
                yield part()
            except Exception as exc:  # noqa: BLE001 -- one unreachable dependency leaves the rest of the scrape
                log.warning("metrics: a part of the scrape failed: %s", _summary(exc))


def _queue_depth(platform: Platform) -> GaugeMetricFamily:
    try:
        counts = _POOLS["broker"].submit(queue_depths, platform.celery, BROKER_TIMEOUT_S)
        counts = counts.result(timeout=CHECK_TIMEOUT_S)
    except FutureTimeout as exc:
        raise TimeoutError(f"the broker did not answer within {CHECK_TIMEOUT_S:g} s") from exc
    if not counts:
        raise ConnectionError("the broker could not be reached for queue depths")
    family = GaugeMetricFamily("synctalk_queue_depth", "Tasks waiting in each queue.", labels=["queue"])
    for queue, n in counts.items():
        family.add_metric([queue], n)
    return family


def _jobs(platform: Platform, tenant_id: str | None = None) -> GaugeMetricFamily:
    """Subjects and renders by status: every tenant's, or ``tenant_id``'s only."""
    family = GaugeMetricFamily("synctalk_jobs", "Subjects and renders by status.", labels=["kind", "status"])
    with platform.sessions() as s:
        for kind, model in (("subject", Subject), ("render", Render)):
            stmt = select(model.status, func.count()).group_by(model.status)
            if tenant_id is not None:
                stmt = stmt.where(model.tenant_id == tenant_id)
            counts = dict(s.execute(stmt).all())
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


def _tenant_of_key(platform: Platform, key: str) -> str | None:
    """The tenant of a valid API key, as the /v1 routes verify it (the same cache of verified keys)."""
    digest = hash_key(key, platform.settings.secret_key)
    cached = platform.verified_keys.get(digest)
    if cached is not None:
        return cached[0]
    found = _find_key(platform, key)
    if found is None:
        return None
    platform.verified_keys.put(digest, *found)
    return found[0]


def _audience(request: Request, platform: Platform) -> Audience:
    """From the ``Authorization`` header: none, the metrics token, or an API key. Anything else is a
    401, so a scraper with a wrong token fails loudly instead of seeing less."""
    header = request.headers.get("authorization")
    if header is None:
        return Audience()
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() == "bearer" and token:
        expected = platform.settings.metrics_token
        if expected and hmac.compare_digest(token.encode(), expected.encode()):  # constant time
            return Audience(everything=True)
        tenant_id = _tenant_of_key(platform, token)
        if tenant_id is not None:
            return Audience(tenant_id=tenant_id)
    raise ApiProblem(
        401, "unauthorized", "Send the metrics token or an API key as 'Authorization: Bearer <token>', or none.",
        {"WWW-Authenticate": "Bearer"},
    )  # fmt: skip


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
def metrics(request: Request) -> Response:
    """Request metrics and queue depths for anyone; with ``Authorization: Bearer <metrics token>`` also
    every tenant's jobs by status and the stage durations; with an API key, its tenant's jobs."""
    platform: Platform = request.app.state.platform
    state = CollectorRegistry()
    state.register(_StateCollector(platform, _audience(request, platform)))
    body = request_metrics(request.app) + generate_latest(state)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
