"""The deployment's own figures, for Prometheus, from ``synctalk scheduler`` (one per deployment).

API replicas each count their requests; what the whole platform is doing lives in the database and
the broker, and is read once per scrape here: what waits in each queue and for how long, what runs,
what is stuck, which workers are alive, and how jobs ended in the last hour. Alerts (deploy/helm's
PrometheusRule) and autoscaling dashboards read these names; keep them stable.

``synctalk_queue_depth`` is the broker's list length (tasks no worker took yet, what KEDA scales on);
``synctalk_stages{status="queued"}`` is the database's view (stages due and not claimed): the two
differ while a lost message waits to be re-sent. No tenant appears in any label.

The scheduler serves them on ``scheduler_metrics_port`` with ``/healthz`` beside (200 while its loop
keeps passing; a hung loop answers 503 and Kubernetes restarts it).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shared.db.models import Render, Stage, Subject, WorkerInfo, utcnow
from shared.db.states import JobState
from shared.queue.stages import QUEUES

log = logging.getLogger(__name__)
FINISHED_WINDOW = timedelta(hours=1)
WORKER_SEEN_WITHIN = timedelta(minutes=3)  # workers report every minute (gpu_worker/tasks/celery_app.py)
FINISHED_STATES = (JobState.succeeded.value, JobState.failed.value, JobState.canceled.value)


def stage_figures(s: Session, stale_after_s: float) -> dict[str, dict[str, float]]:
    """Per queue: stages ``queued`` (due, unclaimed), ``waiting`` (for an earlier stage or a subject),
    ``running``, ``stuck`` (running, heartbeat older than ``stale_after_s``), and ``oldest`` (seconds
    the longest-due queued stage has waited; 0 when none)."""
    now = utcnow()
    figures = {q: {"queued": 0, "waiting": 0, "running": 0, "stuck": 0, "oldest": 0.0} for q in QUEUES}
    # a failed or canceled job's later stages stay queued and never due: only live jobs' count
    live_job = func.coalesce(Subject.status, Render.status).in_(
        (JobState.queued.value, JobState.running.value)
    )
    queued = (
        select(Stage.queue, Stage.ready_at.is_not(None), func.count(), func.min(Stage.ready_at))
        .outerjoin(Subject, Stage.subject_id == Subject.id)
        .outerjoin(Render, Stage.render_id == Render.id)
        .where(Stage.status == JobState.queued.value, live_job)
        .group_by(Stage.queue, Stage.ready_at.is_not(None))
    )
    for queue, due, count, oldest in s.execute(queued):
        row = figures.setdefault(queue, {"queued": 0, "waiting": 0, "running": 0, "stuck": 0, "oldest": 0.0})
        if due:
            row["queued"] = count
            row["oldest"] = max(0.0, (now - _aware(oldest)).total_seconds()) if oldest else 0.0
        else:
            row["waiting"] = count
    stale_before = now - timedelta(seconds=stale_after_s)
    running = (
        select(Stage.queue, func.count(), func.count().filter(Stage.heartbeat_at < stale_before))
        .where(Stage.status == JobState.running.value)
        .group_by(Stage.queue)
    )
    for queue, count, stuck in s.execute(running):
        row = figures.setdefault(queue, {"queued": 0, "waiting": 0, "running": 0, "stuck": 0, "oldest": 0.0})
        row["running"], row["stuck"] = count, stuck
    return figures


def finished_last_hour(s: Session) -> dict[tuple[str, str], int]:
    """(kind, status) -> jobs that ended in the last hour."""
    since = utcnow() - FINISHED_WINDOW
    counts = {(kind, status): 0 for kind in ("subject", "render") for status in FINISHED_STATES}
    for kind, model in (("subject", Subject), ("render", Render)):
        stmt = (
            select(model.status, func.count())
            .where(model.finished_at >= since, model.status.in_(FINISHED_STATES))
            .group_by(model.status)
        )
        for status, n in s.execute(stmt):
            counts[(kind, status)] = n
    return counts


def live_workers(s: Session) -> dict[str, int]:
    """Queue -> worker processes that reported in the last three minutes."""
    counts = dict.fromkeys(QUEUES, 0)
    for (queues,) in s.execute(
        select(WorkerInfo.queues).where(WorkerInfo.seen_at >= utcnow() - WORKER_SEEN_WITHIN)
    ):
        for queue in queues.split(","):
            if queue:
                counts[queue] = counts.get(queue, 0) + 1
    return counts


def _aware(when):
    """SQLite hands back naive datetimes (stored as UTC); PostgreSQL aware ones."""
    from datetime import UTC

    return when if when.tzinfo else when.replace(tzinfo=UTC)


class DeploymentCollector:
    """Read at each scrape. ``depths`` reads the broker (``queue_depths``), ``sessions`` the database,
    ``state`` the scheduler's own (leader, last pass); a part that cannot be read is left out of the
    scrape (the rest still answers), and ``synctalk_scrape_errors`` says which."""

    def __init__(
        self,
        sessions: Callable[[], Session],
        depths: Callable[[], dict[str, int]],
        stale_after_s: float,
        state: Callable[[], tuple[bool, float]],
    ) -> None:
        self.sessions, self.depths, self.stale_after_s, self.state = sessions, depths, stale_after_s, state

    def collect(self) -> Iterator[GaugeMetricFamily]:
        errors = GaugeMetricFamily(
            "synctalk_scrape_errors", "1 when a part of this scrape could not be read.", labels=["part"]
        )
        for part, fn in (("broker", self._broker), ("database", self._database)):
            try:
                yield from fn()
                errors.add_metric([part], 0)
            except Exception as exc:  # noqa: BLE001 -- a dependency away: the rest of the scrape answers
                log.warning("metrics: the %s part failed: %s", part, exc)
                errors.add_metric([part], 1)
        leader, last_pass = self.state()
        yield GaugeMetricFamily(
            "synctalk_scheduler_leader",
            "1 on the scheduler that holds the lease (acts), else 0.",
            value=int(leader),
        )
        yield GaugeMetricFamily(
            "synctalk_scheduler_last_pass_timestamp_seconds", "When the scheduler last finished a pass (Unix time).",
            value=last_pass,
        )  # fmt: skip
        yield errors

    def _broker(self) -> Iterator[GaugeMetricFamily]:
        depths = self.depths()
        if not depths:
            raise ConnectionError("the broker could not be reached")
        family = GaugeMetricFamily(
            "synctalk_queue_depth",
            "Tasks waiting in each broker queue (not yet taken by a worker).",
            labels=["queue"],
        )
        for queue, n in sorted(depths.items()):
            family.add_metric([queue], n)
        yield family

    def _database(self) -> Iterator[GaugeMetricFamily]:
        with self.sessions() as s:
            stages = stage_figures(s, self.stale_after_s)
            finished = finished_last_hour(s)
            workers = live_workers(s)
        by_status = GaugeMetricFamily(
            "synctalk_stages", "Stages by queue and status: queued (due, unclaimed), waiting (for an earlier "
            "stage), running.", labels=["queue", "status"],
        )  # fmt: skip
        oldest = GaugeMetricFamily(
            "synctalk_queue_oldest_waiting_seconds", "How long the longest-waiting due stage of each queue has "
            "waited (0 when none waits).", labels=["queue"],
        )  # fmt: skip
        stuck = GaugeMetricFamily(
            "synctalk_stages_stuck", "Running stages whose heartbeat is older than the stale threshold (the "
            "reaper requeues them).", labels=["queue"],
        )  # fmt: skip
        busy = GaugeMetricFamily("synctalk_workers_busy", "Stages running on each queue.", labels=["queue"])
        for queue, row in sorted(stages.items()):
            for status in ("queued", "waiting", "running"):
                by_status.add_metric([queue, status], row[status])
            oldest.add_metric([queue], row["oldest"])
            stuck.add_metric([queue], row["stuck"])
            busy.add_metric([queue], row["running"])
        done = GaugeMetricFamily(
            "synctalk_jobs_finished_last_hour", "Subjects and renders that ended in the last hour, by status.",
            labels=["kind", "status"],
        )  # fmt: skip
        for (kind, status), n in sorted(finished.items()):
            done.add_metric([kind, status], n)
        alive = GaugeMetricFamily(
            "synctalk_workers",
            "Worker processes that reported in the last 3 minutes, by queue.",
            labels=["queue"],
        )
        for queue, n in sorted(workers.items()):
            alive.add_metric([queue], n)
        yield from (by_status, oldest, stuck, busy, done, alive)


class MetricsServer:
    """``GET /metrics`` (the collector's figures) and ``GET /healthz`` on a thread of its own."""

    def __init__(
        self, collector: DeploymentCollector, healthy: Callable[[], bool], port: int, host: str = "0.0.0.0"
    ):
        registry = CollectorRegistry()
        registry.register(collector)
        handler = _handler(registry, healthy)
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True, name="scheduler-metrics")

    def start(self) -> MetricsServer:
        self.thread.start()
        return self

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _handler(registry: CollectorRegistry, healthy: Callable[[], bool]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 -- http.server's name
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._answer(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                ok = healthy()
                self._answer(200 if ok else 503, b"ok\n" if ok else b"the scheduler loop is not passing\n")
            else:
                self._answer(404, b"not found\n")

        def _answer(self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args) -> None:  # scrapes every 15 s: not worth a log line each
            pass

    return Handler


def healthy_within(last_pass: Callable[[], float], every_s: float) -> Callable[[], bool]:
    """Healthy while the loop finished a pass lately (a pass that failed on a database outage counts:
    the process is alive and retrying; only a hung loop is unhealthy)."""
    limit = max(60.0, 10 * every_s)
    return lambda: time.time() - last_pass() < limit
