"""The scheduler's figures of the whole deployment (shared/jobs/metrics.py), scraped over HTTP from a
real scheduler on SQLite and PostgreSQL with a real Redis broker: what waits and for how long, what
runs, what is stuck, which workers live, how jobs ended; the broker away leaves the database's figures
and says so; /healthz follows the loop."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
import uuid
from datetime import timedelta

from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from shared.db.models import Stage, Subject, Tenant, WorkerInfo, utcnow
from shared.db.session import session_scope
from shared.jobs import dispatch, lifecycle
from shared.jobs.lifecycle import Next
from shared.jobs.scheduler import Scheduler
from shared.queue.app import make_celery
from shared.settings import Settings


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _scrape(port: int) -> dict[tuple[str, tuple], float]:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    found = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def _status(port: int, path: str) -> int:
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10).status
    except urllib.error.HTTPError as exc:
        return exc.code


def _subjects(engine, tenant_id: str, n: int) -> list[str]:
    ids = []
    with session_scope(engine) as s:
        for i in range(n):
            subject, _ = lifecycle.create_subject(s, tenant_id, name=f"s{i}", profile="tiny")
            ids.append(subject.id)
    return ids


def _deployment(engine) -> list[str]:
    """Five subjects: one ingest running, one running with a silent worker, three due (the oldest for
    ten minutes); one subject failed a moment ago, one succeeded two hours ago; workers: two gpu and one
    cpu reporting now, a cpu one gone silent."""
    with session_scope(engine) as s:
        tenant = Tenant(name=f"t-{uuid.uuid4().hex[:6]}")
        s.add(tenant)
    ids = _subjects(engine, tenant.id, 7)
    with session_scope(engine) as s:
        for job_id, task in ((ids[0], "a"), (ids[1], "b")):
            lifecycle.claim(
                s, "subject", job_id, "ingest", task_id=task, worker="w", stale_after_s=60, max_attempts=3
            )
    with session_scope(engine) as s:
        stages = {st.job_id: st for st in s.scalars(select(Stage).where(Stage.name == "ingest"))}
        stages[ids[1]].heartbeat_at = utcnow() - timedelta(minutes=5)
        stages[ids[2]].ready_at = utcnow() - timedelta(minutes=10)
        lifecycle.fail(s, "subject", ids[5], "bad_media", "no face")
        lifecycle.fail(s, "subject", ids[6], "bad_media", "no face")
        s.get(Subject, ids[6]).finished_at = utcnow() - timedelta(hours=2)
        now = utcnow()
        s.add_all([
            WorkerInfo(name="gpu@a", queues="gpu", seen_at=now), WorkerInfo(name="gpu@b", queues="gpu", seen_at=now),
            WorkerInfo(name="cpu@a", queues="cpu", seen_at=now),
            WorkerInfo(name="cpu@gone", queues="cpu", seen_at=now - timedelta(minutes=30)),
        ])  # fmt: skip
    return ids


def _scheduler(engine, redis_url: str) -> Scheduler:
    settings = Settings(database_url=str(engine.url), broker_url=redis_url, job_stale_after_s=60)
    return Scheduler(settings, engine, make_celery(settings), storage=None)


def test_the_scheduler_serves_the_deployment_figures(engine, redis_server):
    ids = _deployment(engine)
    sched = _scheduler(engine, redis_server.url)
    # the three due ingests reach the broker (as the API sends them after its commit)
    assert dispatch.send(sched.celery, sched.sessions, [Next("subject", i, "ingest") for i in ids[2:5]])
    port = free_port()
    server = sched.serve_metrics(port)
    try:
        assert _status(port, "/healthz") == 503  # no pass yet
        sched.tick()
        sched.last_pass = time.time()
        assert _status(port, "/healthz") == 200
        m = _scrape(port)
    finally:
        server.close()

    def v(name: str, **labels) -> float:
        return m[(name, tuple(sorted(labels.items())))]

    assert v("synctalk_queue_depth", queue="cpu") == 3 == redis_server.llen("cpu")
    assert v("synctalk_queue_depth", queue="gpu") == 0
    assert v("synctalk_stages", queue="cpu", status="queued") == 3
    assert v("synctalk_stages", queue="cpu", status="running") == 2
    assert v("synctalk_workers_busy", queue="cpu") == 2
    assert v("synctalk_stages", queue="cpu", status="waiting") == 5 * 1  # the five live subjects' preprocess
    assert v("synctalk_stages", queue="gpu", status="waiting") == 5  # and their training
    assert v("synctalk_stages_stuck", queue="cpu") == 1
    assert 600 <= v("synctalk_queue_oldest_waiting_seconds", queue="cpu") < 700
    assert v("synctalk_queue_oldest_waiting_seconds", queue="gpu") == 0
    assert v("synctalk_jobs_finished_last_hour", kind="subject", status="failed") == 1  # not the old one
    assert v("synctalk_jobs_finished_last_hour", kind="render", status="succeeded") == 0
    assert v("synctalk_workers", queue="gpu") == 2
    assert v("synctalk_workers", queue="cpu") == 1  # the silent one is not counted
    assert v("synctalk_scheduler_leader") == 1
    assert abs(v("synctalk_scheduler_last_pass_timestamp_seconds") - time.time()) < 60
    assert v("synctalk_scrape_errors", part="broker") == 0
    assert not any("tenant" in dict(labels) for _, labels in m)  # nothing of any tenant


def test_a_broker_away_leaves_the_database_figures(engine, redis_server):
    _deployment(engine)
    sched = _scheduler(engine, redis_server.url)
    redis_server.kill()
    port = free_port()
    server = sched.serve_metrics(port)
    try:
        m = _scrape(port)
    finally:
        server.close()
    assert m[("synctalk_scrape_errors", (("part", "broker"),))] == 1
    assert m[("synctalk_scrape_errors", (("part", "database"),))] == 0
    assert not any(name == "synctalk_queue_depth" for name, _ in m)
    assert m[("synctalk_stages", (("queue", "cpu"), ("status", "queued")))] == 3


def test_a_taken_port_does_not_stop_the_scheduler(engine, redis_server):
    import socket

    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        sched = _scheduler(engine, redis_server.url)
        assert sched.serve_metrics(taken.getsockname()[1]) is None
    assert _scheduler(engine, redis_server.url).serve_metrics(0) is None  # 0: no metrics wanted
