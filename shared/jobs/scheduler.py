"""``synctalk scheduler``: the platform's one background process per deployment.

It sends what the database says should run and the broker does not carry (shared/jobs/dispatch.py),
reaps running stages whose worker went silent (shared/jobs/lifecycle.reap), delivers webhooks
(shared/jobs/webhooks.deliver_due), deletes stored files of deleted rows (shared/jobs/deletions) and
prunes old rows (shared/jobs/retention). It never runs inside a worker: with GPU workers scaled to
zero, jobs are still reaped and webhooks still go out.

Any number may run (two replicas, an old one still stopping): one acts. The ``scheduler_leases`` row
is the database lock: a process acts only while it holds an unexpired lease, renews it every pass, and
stops acting (before its lease can expire) when it could not renew it; another takes over once the
lease expired. The work is safe to overlap anyway (row locks and conditional updates), the lease keeps
it from being done twice for nothing.

The reaper distrusts heartbeats it could not watch: after the scheduler starts, or after its own
database connection came back from an outage, it reaps nothing until it has seen the database for
``job_stale_after_s``. Workers cut off from the database by the same outage have had that long to
heartbeat again; a stage is reaped only when its worker is really gone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import Engine, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from shared.db.models import SchedulerLease, utcnow
from shared.jobs import dispatch, lifecycle
from shared.settings import Settings
from shared.transient import describe

log = logging.getLogger(__name__)
LEASE_NAME = "scheduler"
WEBHOOKS_EVERY_S = 2.0
DELETIONS_EVERY_S = 10.0  # stored files of deleted rows: retried this often while storage refuses
RETENTION_EVERY_S = 3600.0


def acquire(sessions: Callable[[], Session], owner: str, ttl_s: float, name: str = LEASE_NAME) -> bool:
    """Take or renew the lease ``name`` for ``owner`` (conditional on it being ours or expired)."""
    now = utcnow()
    with sessions() as s:
        taken = s.execute(
            update(SchedulerLease)
            .where(
                SchedulerLease.name == name,
                (SchedulerLease.owner == owner) | (SchedulerLease.expires_at < now),
            )
            .values(owner=owner, expires_at=now + timedelta(seconds=ttl_s))
        )
        if taken.rowcount == 1:
            s.commit()
            return True
        s.rollback()
        s.add(
            SchedulerLease(name=name, owner=owner, expires_at=now + timedelta(seconds=ttl_s), acquired_at=now)
        )
        try:
            s.commit()
            return True
        except IntegrityError:  # someone else holds it
            s.rollback()
            return False


def release(sessions: Callable[[], Session], owner: str, name: str = LEASE_NAME) -> None:
    """Give the lease up at once (a clean stop): the next scheduler need not wait for it to expire."""
    with sessions() as s:
        s.execute(
            update(SchedulerLease)
            .where(SchedulerLease.name == name, SchedulerLease.owner == owner)
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
        s.commit()


@dataclass
class Scheduler:
    settings: Settings
    engine: Engine
    celery: object
    storage: object
    owner: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")
    stop: threading.Event = field(default_factory=threading.Event)
    _leader_until: float = 0.0  # monotonic time until which this process may act
    _db_since: float | None = None  # monotonic time since the database has answered without a break
    _last_housekeeping: float = float("-inf")
    last_pass: float = 0.0  # Unix time the main loop last finished a pass (its /healthz and metrics)
    metrics_server: object | None = None

    def __post_init__(self) -> None:
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        self.every = self.settings.scheduler_every_s
        self.ttl = max(10.0, 5 * self.every)

    @property
    def leading(self) -> bool:
        return time.monotonic() < self._leader_until

    # --- the main loop: lease, dispatch, reap ---------------------------------------------------------
    def run(self) -> None:
        """Until ``stop`` is set; the webhook and housekeeping loops run beside it on threads."""
        threads = [
            threading.Thread(target=self._loop, args=(self.deliver_webhooks, WEBHOOKS_EVERY_S),
                             daemon=True, name="scheduler-webhooks"),
            threading.Thread(target=self._loop, args=(self.housekeeping, DELETIONS_EVERY_S),
                             daemon=True, name="scheduler-housekeeping"),
        ]  # fmt: skip
        for t in threads:
            t.start()
        self.metrics_server = self.serve_metrics(self.settings.scheduler_metrics_port)
        log.info("scheduler %s started", self.owner)
        try:
            while not self.stop.is_set():
                self.tick()
                self.last_pass = time.time()
                self.stop.wait(self.every)
        finally:
            self.stop.set()
            for t in threads:
                t.join(timeout=15)
            if self.leading:
                with contextlib.suppress(Exception):  # it expires on its own
                    release(self.sessions, self.owner)
            if self.metrics_server is not None:
                self.metrics_server.close()
            log.info("scheduler %s stopped", self.owner)

    def _loop(self, fn: Callable[[], object], every: float) -> None:
        while not self.stop.wait(every):
            if not self.leading:
                continue
            try:
                fn()
            except Exception as exc:  # noqa: BLE001 -- a pass that failed is tried again next time
                log.warning("scheduler: %s failed: %s", fn.__name__, describe(exc))

    def tick(self) -> None:
        """One pass: renew (or take) the lease, then dispatch and reap while leading."""
        started = time.monotonic()
        try:
            leader = acquire(self.sessions, self.owner, self.ttl)
        except Exception as exc:  # noqa: BLE001 -- the database is away: nobody can act
            if self._db_since is not None:
                log.warning("scheduler: the database is unreachable (%s)", describe(exc))
            self._db_since = None
            return
        if self._db_since is None:
            self._db_since = started
        if not leader:
            if self._leader_until:
                log.warning("scheduler %s: another scheduler holds the lease; standing by", self.owner)
            self._leader_until = 0.0
            return
        if not self.leading:
            log.info("scheduler %s: acting (lease held)", self.owner)
        self._leader_until = started + self.ttl - 2 * self.every  # stop acting before it can expire
        try:
            self.dispatch()
            self.reap()
        except Exception as exc:  # noqa: BLE001
            log.warning("scheduler pass failed: %s", describe(exc))

    def dispatch(self) -> dispatch.DispatchReport:
        report = dispatch.dispatch(
            self.celery, self.sessions, resend_after_s=self.settings.job_resend_after_s
        )
        if report.sent or report.resent:
            log.info("scheduler: sent %d due task(s), %d lost one(s) again", report.sent, report.resent)
        return report

    def reap(self) -> int:
        """Requeue (or fail) running stages whose worker went silent, once heartbeats can be trusted."""
        stale = self.settings.job_stale_after_s
        if self._db_since is None or time.monotonic() - self._db_since < stale:
            return 0
        with self.sessions() as s:
            nxt = lifecycle.reap(s, stale_after_s=stale, max_attempts=self.settings.job_max_attempts)
            s.commit()
        if nxt:
            log.warning("scheduler: requeued %d stage(s) whose worker stopped responding", len(nxt))
            dispatch.send(self.celery, self.sessions, nxt)
        return len(nxt)

    def serve_metrics(self, port: int):
        """The deployment's figures and ``/healthz`` on ``port`` (shared/jobs/metrics.py); None when
        ``port`` is 0 or taken (the scheduler works on without them, and says so)."""
        if not port:
            return None
        from shared.jobs.metrics import DeploymentCollector, MetricsServer, healthy_within
        from shared.queue.app import queue_depths

        collector = DeploymentCollector(
            self.sessions, lambda: queue_depths(self.celery), self.settings.job_stale_after_s,
            lambda: (self.leading, self.last_pass),
        )  # fmt: skip
        try:
            server = MetricsServer(collector, healthy_within(lambda: self.last_pass, self.every), port)
        except OSError as exc:
            log.warning(
                "scheduler: no metrics on port %d (%s); set SYNCTALK_SCHEDULER_METRICS_PORT", port, exc
            )
            return None
        log.info("scheduler: metrics on http://0.0.0.0:%d/metrics", server.port)
        return server.start()

    # --- beside it --------------------------------------------------------------------------------------
    def deliver_webhooks(self) -> int:
        from shared.jobs.webhooks import deliver_due

        return deliver_due(self.engine, allow_private=self.settings.webhook_allow_private)

    def housekeeping(self) -> None:
        """Stored files of deleted rows (retried until storage takes them), then retention (hourly)."""
        try:
            from shared.jobs import deletions
        except ImportError:  # pragma: no cover - older trees
            deletions = None
        if deletions is not None:
            deletions.purge_due(self.sessions, self.storage)
        if time.monotonic() - self._last_housekeeping >= RETENTION_EVERY_S:
            try:
                from shared.jobs import retention
            except ImportError:  # pragma: no cover
                return
            counts = retention.prune(self.sessions, self.settings)
            self._last_housekeeping = time.monotonic()
            if any(counts.values()):
                log.info("retention: pruned %s", counts)


def build(settings: Settings) -> Scheduler:
    from shared.db.schema import ensure_schema
    from shared.db.session import make_engine
    from shared.queue.app import make_celery
    from shared.storage import storage_from_settings

    ensure_schema(settings, verify=False)  # the embedded default makes its own; PostgreSQL is migrated apart

    return Scheduler(settings, make_engine(settings), make_celery(settings), storage_from_settings(settings))
