"""The life of a job in the database, on SQLite and on PostgreSQL: stages claimed and advanced, a
redelivered task that finds nothing to do, cancel, failure reaching the waiting renders, the reaper."""

from __future__ import annotations

import os
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from shared.db.models import Event, Stage, Subject, Tenant, utcnow
from shared.db.session import session_scope
from shared.jobs import lifecycle, webhooks
from shared.jobs.lifecycle import Next
from shared.settings import Settings

REPO = Path(__file__).resolve().parents[2]


def _tenant(engine) -> str:
    with session_scope(engine) as s:
        t = Tenant(name=f"t-{uuid.uuid4().hex[:6]}")
        s.add(t)
    return t.id


def _subject(engine, tenant_id: str):
    with session_scope(engine) as s:
        subject, nxt = lifecycle.create_subject(
            s, tenant_id, name="ann", profile="tiny", upload_id=None, source_key=None
        )
    return subject.id, nxt


def _run_stage(engine, kind, job_id, name, task="t1") -> list[Next]:
    with session_scope(engine) as s:
        stage = lifecycle.claim(s, kind, job_id, name, task_id=task, worker="w", stale_after_s=60)
        assert stage is not None
    with session_scope(engine) as s:
        stage = s.scalars(select(Stage).where(Stage.job_id == job_id, Stage.name == name)).one()
        assert lifecycle.progress(s, kind, job_id, stage, 0.5, "half way")
    with session_scope(engine) as s:
        stage = s.scalars(select(Stage).where(Stage.job_id == job_id, Stage.name == name)).one()
        return lifecycle.finish_stage(s, kind, job_id, stage)


def test_a_subject_goes_through_its_stages_and_starts_its_waiting_renders(engine):
    tenant = _tenant(engine)
    subject_id, nxt = _subject(engine, tenant)
    assert nxt == [Next("subject", subject_id, "ingest")]
    with session_scope(engine) as s:  # a render submitted while the subject trains waits, unsent
        render, sent = lifecycle.create_render(
            s, tenant, lifecycle.job_row(s, "subject", subject_id), audio_key="k"
        )
    assert sent == []
    assert _run_stage(engine, "subject", subject_id, "ingest") == [Next("subject", subject_id, "preprocess")]
    with session_scope(engine) as s:
        doc = lifecycle.view(s, "subject", lifecycle.job_row(s, "subject", subject_id))
        assert doc["status"] == "running" and doc["stage"] == "ingest" and 0.0 < doc["progress"] < 0.2
        assert [st["status"] for st in doc["stages"]] == ["succeeded", "queued", "queued"]
    assert _run_stage(engine, "subject", subject_id, "preprocess") == [Next("subject", subject_id, "train")]
    assert _run_stage(engine, "subject", subject_id, "train") == [Next("render", render.id, "render")]
    with session_scope(engine) as s:
        doc = lifecycle.view(s, "subject", lifecycle.job_row(s, "subject", subject_id))
        assert doc["status"] == "succeeded" and doc["progress"] == 1.0 and doc["finished_at"]
        types = [
            e.type for e in s.scalars(select(Event).where(Event.resource_id == subject_id).order_by(Event.id))
        ]
    assert types[0] == "subject.queued" and types[-1] == "subject.succeeded" and "subject.running" in types
    # a render submitted now starts at once
    with session_scope(engine) as s:
        render2, sent = lifecycle.create_render(
            s, tenant, lifecycle.job_row(s, "subject", subject_id), audio_key="k"
        )
    assert sent == [Next("render", render2.id, "render")]


def test_a_redelivered_task_finds_nothing_to_do(engine):
    tenant = _tenant(engine)
    subject_id, _ = _subject(engine, tenant)
    with session_scope(engine) as s:
        assert lifecycle.claim(s, "subject", subject_id, "ingest", task_id="a", worker="w", stale_after_s=60)
    with session_scope(engine) as s:  # the same stage, another task, while the first worker is alive
        assert (
            lifecycle.claim(s, "subject", subject_id, "ingest", task_id="b", worker="w2", stale_after_s=60)
            is None
        )
    with session_scope(engine) as s:
        stage = s.scalars(select(Stage).where(Stage.job_id == subject_id, Stage.name == "ingest")).one()
        lifecycle.finish_stage(s, "subject", subject_id, stage)
    with session_scope(engine) as s:  # a finished stage is never redone
        assert (
            lifecycle.claim(s, "subject", subject_id, "ingest", task_id="c", worker="w", stale_after_s=60)
            is None
        )
    with session_scope(engine) as s:
        lifecycle.fail(s, "subject", subject_id, "no_face", "no face was found")
    with session_scope(engine) as s:  # a finished job is never resurrected
        assert (
            lifecycle.claim(s, "subject", subject_id, "preprocess", task_id="d", worker="w", stale_after_s=60)
            is None
        )
        lifecycle.fail(s, "subject", subject_id, "other", "ignored")
        row = lifecycle.job_row(s, "subject", subject_id)
        assert row.status == "failed" and row.error_code == "no_face"


def test_a_failed_subject_fails_its_waiting_renders_with_its_code(engine):
    tenant = _tenant(engine)
    subject_id, _ = _subject(engine, tenant)
    with session_scope(engine) as s:
        render, _ = lifecycle.create_render(
            s, tenant, lifecycle.job_row(s, "subject", subject_id), audio_key="k"
        )
    with session_scope(engine) as s:
        lifecycle.fail(s, "subject", subject_id, "no_face", "no face was found anywhere in the video")
    with session_scope(engine) as s:
        doc = lifecycle.view(s, "render", lifecycle.job_row(s, "render", render.id))
        assert doc["status"] == "failed" and doc["error"]["code"] == "no_face"
        late, sent = lifecycle.create_render(
            s, tenant, lifecycle.job_row(s, "subject", subject_id), audio_key="k"
        )
        assert sent == [] and late.status == "failed" and late.error_code == "no_face"


def test_cancel_stops_a_queued_job_at_once_and_a_running_one_at_its_next_report(engine):
    tenant = _tenant(engine)
    queued, _ = _subject(engine, tenant)
    with session_scope(engine) as s:
        assert lifecycle.request_cancel(s, "subject", queued)
    with session_scope(engine) as s:
        assert lifecycle.job_row(s, "subject", queued).status == "canceled"
        assert not lifecycle.request_cancel(s, "subject", queued)  # already finished
    running, _ = _subject(engine, tenant)
    with session_scope(engine) as s:
        lifecycle.claim(s, "subject", running, "ingest", task_id="a", worker="w", stale_after_s=60)
    with session_scope(engine) as s:
        assert lifecycle.request_cancel(s, "subject", running)
        assert lifecycle.job_row(s, "subject", running).status == "running"  # the worker has not seen it yet
    with session_scope(engine) as s:
        stage = s.scalars(select(Stage).where(Stage.job_id == running, Stage.name == "ingest")).one()
        assert lifecycle.progress(s, "subject", running, stage, 0.3, "") is False  # stop now
        lifecycle.acknowledge_cancel(s, "subject", running)
    with session_scope(engine) as s:
        doc = lifecycle.view(s, "subject", lifecycle.job_row(s, "subject", running))
        assert doc["status"] == "canceled" and doc["stages"][0]["status"] == "canceled"


def test_the_reaper_requeues_a_lost_worker_s_stage_then_gives_up(engine):
    tenant = _tenant(engine)
    subject_id, _ = _subject(engine, tenant)

    def lose_worker(task: str) -> None:
        with session_scope(engine) as s:
            assert lifecycle.claim(
                s, "subject", subject_id, "ingest", task_id=task, worker="w", stale_after_s=60
            )
        with session_scope(engine) as s:  # its heartbeat stops
            stage = s.scalars(select(Stage).where(Stage.job_id == subject_id, Stage.name == "ingest")).one()
            stage.heartbeat_at = utcnow() - timedelta(minutes=10)

    lose_worker("a")
    with session_scope(engine) as s:
        assert lifecycle.reap(s, stale_after_s=60, max_attempts=2) == [Next("subject", subject_id, "ingest")]
    with session_scope(engine) as s:
        assert lifecycle.reap(s, stale_after_s=60, max_attempts=2) == []  # nothing running now
    lose_worker("b")  # the second attempt is lost as well: out of attempts
    with session_scope(engine) as s:
        assert lifecycle.reap(s, stale_after_s=60, max_attempts=2) == []
    with session_scope(engine) as s:
        row = lifecycle.job_row(s, "subject", subject_id)
        assert row.status == "failed" and row.error_code == "worker_lost"


def test_every_status_change_is_queued_for_the_tenant_s_matching_webhooks(engine):
    from shared.db.models import Webhook, WebhookDelivery

    tenant, other = _tenant(engine), _tenant(engine)
    with session_scope(engine) as s:
        s.add_all(
            [
                Webhook(tenant_id=tenant, url="http://127.0.0.1:9/a", events=["subject.*"], secret="whsec_x"),
                Webhook(tenant_id=tenant, url="http://127.0.0.1:9/b", events=["render.*"], secret="whsec_x"),
                Webhook(tenant_id=other, url="http://127.0.0.1:9/c", events=["*"], secret="whsec_x"),
            ]
        )
    subject_id, _ = _subject(engine, tenant)
    _run_stage(engine, "subject", subject_id, "ingest")
    with session_scope(engine) as s:
        rows = s.execute(
            select(Webhook.url, Event.type)
            .join(WebhookDelivery, WebhookDelivery.webhook_id == Webhook.id)
            .join(Event, Event.id == WebhookDelivery.event_id)
            .order_by(Event.id)
        ).all()
    # queued and running, to the subject hook only; progress is never delivered; no other tenant's hook
    assert rows == [("http://127.0.0.1:9/a", "subject.queued"), ("http://127.0.0.1:9/a", "subject.running")]


def test_many_renders_are_created_without_a_query_each_and_show_as_the_database_does(engine):
    """A batch's renders go in with one flush: no query per render, and the document each one's event
    carries (built before anything was written) is what reading the row back shows."""
    from sqlalchemy import event as sa_event

    from shared.db.models import Batch, Render, new_id

    tenant = _tenant(engine)
    sid, _ = _subject(engine, tenant)
    with session_scope(engine) as s:
        subject = s.get(Subject, sid)
        subject.status = "succeeded"
    statements: list[str] = []
    with session_scope(engine) as s:
        subject = s.get(Subject, sid)
        hooks = webhooks.subscriptions(s, tenant)
        batch = Batch(id=new_id(), tenant_id=tenant, subject_id=sid)
        s.add(batch)
        sa_event.listen(s.connection(), "before_cursor_execute", lambda *a: statements.append(a[2]))
        made = [
            lifecycle.create_render(s, tenant, subject, ref=f"line-{i}", batch_id=batch.id, hooks=hooks)
            for i in range(50)
        ]
        assert statements == []  # nothing was sent while the 50 renders were made
        s.flush()
        assert not [q for q in statements if not q.lstrip().upper().startswith("INSERT")]  # no reads
        if engine.dialect.name == "postgresql":  # multi-row INSERTs (SQLite's driver sends rows one by one)
            assert len(statements) <= 8, statements  # one per table (batch, renders, stages, events)
        ids = [r.id for r, _ in made]
        assert all(n == [Next("render", r.id, "render")] for r, n in made)
    with session_scope(engine) as s:
        for rid in ids[:5]:
            shown = lifecycle.view(s, "render", s.get(Render, rid), "")
            sent = s.scalars(select(Event).where(Event.resource_id == rid)).one()
            assert sent.type == "render.queued" and sent.data == shown
        assert s.scalar(select(func.count()).select_from(Stage).where(Stage.render_id.in_(ids))) == 50


def test_stages_sent_together_all_reach_their_queue():
    """``send_stages`` pipelines many tasks through one producer (kombu's publish batch on Redis)."""
    url = os.environ.get("SYNCTALK_TEST_REDIS_URL")
    if not url:
        if os.environ.get("CI") == "true":
            pytest.fail("CI must provide SYNCTALK_TEST_REDIS_URL (.ci/run sets it)")
        pytest.skip("SYNCTALK_TEST_REDIS_URL not set")
    import json

    import redis

    from shared.queue.app import make_celery, send_stages

    r = redis.Redis.from_url(url)
    r.delete("gpu", "cpu")
    try:
        app = make_celery(Settings(broker_url=url))
        ids = send_stages(app, [("render", f"job-{i}", "render") for i in range(1203)])  # > one pipeline
        assert len(set(ids)) == 1203 and r.llen("gpu") == 1203 and r.llen("cpu") == 0
        first = json.loads(r.rpop("gpu"))
        assert first["headers"]["argsrepr"] == "['render', 'job-0', 'render']"  # in the order sent
    finally:
        r.delete("gpu", "cpu")
