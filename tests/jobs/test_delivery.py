"""Delivery that survives the broker and claims that fence their owner, on SQLite and PostgreSQL, with a
real Redis of the test's own as the broker: due stages are sent from the outbox and sent again when the
broker loses them; a claim is a lease every later write checks; attempts are bounded; a stage can be
handed back; the scheduler acts alone and reaps only once it can trust heartbeats."""

from __future__ import annotations

import time
import uuid
from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import sessionmaker

from shared.db.models import SchedulerLease, Stage, Subject, Tenant, utcnow
from shared.db.session import session_scope
from shared.jobs import dispatch, lifecycle, scheduler
from shared.jobs.lifecycle import LeaseLost, Next
from shared.queue.app import make_celery
from shared.settings import Settings


def _tenant(engine) -> str:
    with session_scope(engine) as s:
        t = Tenant(name=f"t-{uuid.uuid4().hex[:6]}")
        s.add(t)
    return t.id


def _subject(engine, tenant_id: str) -> str:
    with session_scope(engine) as s:
        subject, _ = lifecycle.create_subject(s, tenant_id, name="ann", profile="tiny")
    return subject.id


def _stage(s, job_id: str, name: str) -> Stage:
    return s.scalars(select(Stage).where(Stage.job_id == job_id, Stage.name == name)).one()


def _claim(engine, job_id: str, name: str = "ingest", task: str = "t1", max_attempts: int | None = 3):
    with session_scope(engine) as s:
        stage = lifecycle.claim(
            s, "subject", job_id, name, task_id=task, worker="w", stale_after_s=60, max_attempts=max_attempts
        )
        return None if stage is None else (stage.id, stage.lease)


def _silence(engine, job_id: str, name: str = "ingest") -> None:
    """The owner's heartbeat stopped long ago (its worker was killed)."""
    with session_scope(engine) as s:
        _stage(s, job_id, name).heartbeat_at = utcnow() - timedelta(minutes=10)


def test_a_new_claim_fences_the_old_owner_out(engine):
    subject_id = _subject(engine, _tenant(engine))
    stage_id, old = _claim(engine, subject_id, task="first")
    assert _claim(engine, subject_id, task="duplicate") is None  # a duplicate task while the owner lives
    _silence(engine, subject_id)
    with session_scope(engine) as s:  # the reaper gives the stage to another worker
        assert lifecycle.reap(s, stale_after_s=60, max_attempts=3) == [Next("subject", subject_id, "ingest")]
    _, new = _claim(engine, subject_id, task="second")
    assert new != old

    with session_scope(engine) as s:  # the old owner wakes up: every write of it is refused
        stage = s.get(Stage, stage_id)
        try:
            lifecycle.progress(s, "subject", subject_id, stage, 0.9, "late", lease=old)
            raise AssertionError("a stale owner's progress was written")
        except LeaseLost:
            pass
        assert not lifecycle.heartbeat(s, stage_id, old)
    with session_scope(engine) as s:
        try:
            lifecycle.finish_stage(
                s, "subject", subject_id, s.get(Stage, stage_id), lease=old, source_key="x"
            )
            raise AssertionError("a stale owner finished the stage")
        except LeaseLost:
            pass
    with session_scope(engine) as s:
        try:
            lifecycle.fail(s, "subject", subject_id, "boom", "stale", stage_id=stage_id, lease=old)
            raise AssertionError("a stale owner failed the job")
        except LeaseLost:
            pass
    with session_scope(engine) as s:
        row = lifecycle.job_row(s, "subject", subject_id)
        assert (
            row.status == "running"
            and row.source_key is None
            and _stage(s, subject_id, "ingest").attempts == 2
        )
        # the new owner's finish goes through and makes the next stage due, unsent
        nxt = lifecycle.finish_stage(
            s, "subject", subject_id, s.get(Stage, stage_id), lease=new, source_key="k"
        )
        assert nxt == [Next("subject", subject_id, "preprocess")]
    with session_scope(engine) as s:
        following = _stage(s, subject_id, "preprocess")
        assert following.ready_at is not None and following.sent_at is None
        assert _stage(s, subject_id, "train").ready_at is None  # not due before preprocess is done


def test_a_stage_that_keeps_killing_its_worker_fails_after_its_attempts(engine):
    """A poison pill: its worker dies, Celery redelivers the very same task at once, again and again."""
    subject_id = _subject(engine, _tenant(engine))
    for _ in range(3):
        assert _claim(engine, subject_id, task="same-task") is not None  # redelivered: taken over
    assert _claim(engine, subject_id, task="same-task") is None  # the fourth run never starts
    with session_scope(engine) as s:
        row = lifecycle.job_row(s, "subject", subject_id)
        assert row.status == "failed" and row.error_code == "worker_lost"
        assert "started 3 times" in row.error_message and "ingest" in row.error_message
        assert _stage(s, subject_id, "ingest").status == "failed"


def test_a_stage_handed_back_on_shutdown_costs_no_attempt_and_runs_again(engine):
    subject_id = _subject(engine, _tenant(engine))
    stage_id, lease = _claim(engine, subject_id)
    with session_scope(engine) as s:
        nxt = lifecycle.hand_back(
            s, "subject", subject_id, stage_id, lease, why="shutdown", count_attempt=False
        )
        assert nxt == Next("subject", subject_id, "ingest")
    with session_scope(engine) as s:
        stage = _stage(s, subject_id, "ingest")
        assert (stage.status, stage.attempts, stage.lease, stage.sent_at) == ("queued", 0, None, None)
        assert (
            lifecycle.hand_back(s, "subject", subject_id, stage_id, lease, why="again") is None
        )  # lease gone
    assert _claim(engine, subject_id, task="next-worker") is not None


def test_a_stage_handed_back_for_an_outage_waits_and_gives_up_with_a_reason(engine):
    subject_id = _subject(engine, _tenant(engine))
    for attempt in range(1, 4):
        stage_id, lease = _claim(engine, subject_id, task=f"t{attempt}")
        with session_scope(engine) as s:
            why = f"{lifecycle.UNAVAILABLE_MARK} StorageError: S3 storage is unreachable"
            lifecycle.hand_back(s, "subject", subject_id, stage_id, lease, why=why, delay_s=30)
        assert _claim(engine, subject_id, task="too-early") is None  # due again only after the delay
        with session_scope(engine) as s:
            _stage(s, subject_id, "ingest").ready_at = utcnow() - timedelta(seconds=1)
    assert _claim(engine, subject_id, task="t4") is None
    with session_scope(engine) as s:
        row = lifecycle.job_row(s, "subject", subject_id)
        assert row.status == "failed" and row.error_code == "service_unavailable"
        assert "S3 storage is unreachable" in row.error_message


def _broker(redis_server):
    return make_celery(Settings(broker_url=redis_server.url))


def test_due_stages_are_sent_from_the_outbox_and_marked(engine, redis_server):
    celery, sessions = _broker(redis_server), sessionmaker(engine, expire_on_commit=False)
    tenant = _tenant(engine)
    ids = [_subject(engine, tenant) for _ in range(3)]
    later = utcnow() + timedelta(seconds=10)  # past the grace left to the process that committed them
    report = dispatch.dispatch(celery, sessions, resend_after_s=30, now=later)
    assert (report.sent, report.resent, redis_server.llen("cpu")) == (3, 0, 3)
    with session_scope(engine) as s:
        assert all(_stage(s, i, "ingest").sent_at is not None for i in ids)
    # a second pass sends nothing: they are in the broker, not yet lost
    assert dispatch.dispatch(celery, sessions, resend_after_s=30, now=later).sent == 0
    assert redis_server.llen("cpu") == 3


def test_tasks_a_restarted_broker_lost_are_sent_again(engine, redis_server):
    celery, sessions = _broker(redis_server), sessionmaker(engine, expire_on_commit=False)
    tenant = _tenant(engine)
    ids = [_subject(engine, tenant) for _ in range(2)]
    assert dispatch.send(celery, sessions, [Next("subject", i, "ingest") for i in ids])
    assert redis_server.llen("cpu") == 2
    redis_server.restart()  # empty: the two messages are gone
    soon = utcnow() + timedelta(seconds=5)
    assert dispatch.dispatch(celery, sessions, resend_after_s=30, now=soon).resent == 0  # not yet
    later = utcnow() + timedelta(seconds=31)
    assert dispatch.dispatch(celery, sessions, resend_after_s=30, now=later).resent == 2
    assert redis_server.llen("cpu") == 2


def test_a_task_lost_behind_others_is_found_by_the_queue_order(engine, redis_server):
    """The queue still holds messages, but a stage sent after the lost one was already claimed."""
    celery, sessions = _broker(redis_server), sessionmaker(engine, expire_on_commit=False)
    tenant = _tenant(engine)
    lost, taken, waiting = (_subject(engine, tenant) for _ in range(3))
    with session_scope(engine) as s:
        _stage(s, lost, "ingest").sent_at = utcnow() - timedelta(seconds=120)  # its message vanished
        _stage(s, taken, "ingest").sent_at = utcnow() - timedelta(seconds=60)
    _claim(engine, taken)  # a worker took a task sent a minute after the lost one's
    dispatch.send(celery, sessions, [Next("subject", waiting, "ingest")])  # the queue is not empty
    with session_scope(engine) as s:
        _stage(s, waiting, "ingest").sent_at = utcnow() - timedelta(seconds=40)  # after the claimed one
    report = dispatch.dispatch(celery, sessions, resend_after_s=30)
    assert report.resent == 1  # the lost one; the waiting one was sent after it and may still be queued
    with session_scope(engine) as s:
        assert _aware_age(_stage(s, lost, "ingest").sent_at) < 5
        assert _aware_age(_stage(s, waiting, "ingest").sent_at) > 35


def _aware_age(t) -> float:
    from datetime import UTC

    return (utcnow() - (t if t.tzinfo else t.replace(tzinfo=UTC))).total_seconds()


def test_a_send_refused_by_a_dead_broker_leaves_the_stage_for_the_scheduler(engine, redis_server):
    celery, sessions = _broker(redis_server), sessionmaker(engine, expire_on_commit=False)
    subject_id = _subject(engine, _tenant(engine))
    redis_server.kill()
    started = time.monotonic()
    assert not dispatch.send(celery, sessions, [Next("subject", subject_id, "ingest")])
    assert time.monotonic() - started < 10  # a request is not held up for long
    with session_scope(engine) as s:
        assert _stage(s, subject_id, "ingest").sent_at is None
    assert dispatch.dispatch(celery, sessions, resend_after_s=30, now=utcnow() + timedelta(seconds=10)).failed
    redis_server.start()
    assert (
        dispatch.dispatch(celery, sessions, resend_after_s=30, now=utcnow() + timedelta(seconds=10)).sent == 1
    )
    assert redis_server.llen("cpu") == 1


def _scheduler(engine, redis_server, **settings) -> scheduler.Scheduler:
    s = Settings(broker_url=redis_server.url, scheduler_every_s=0.5, **settings)
    return scheduler.Scheduler(s, engine, make_celery(s), storage=None)


def test_one_scheduler_acts_and_another_takes_over_when_it_stops(engine, redis_server):
    a, b = _scheduler(engine, redis_server), _scheduler(engine, redis_server)
    a.owner, b.owner = "a", "b"
    a.tick()
    b.tick()
    assert a.leading and not b.leading
    with session_scope(engine) as s:
        assert s.get(SchedulerLease, scheduler.LEASE_NAME).owner == "a"
    scheduler.release(a.sessions, "a")  # a stops cleanly
    b.tick()
    assert b.leading
    a.tick()
    assert not a.leading  # b's lease is live: a stands by
    with session_scope(engine) as s:  # b dies: once its lease expired, a takes over
        s.execute(update(SchedulerLease).values(expires_at=utcnow() - timedelta(seconds=1)))
    a.tick()
    assert a.leading


def test_the_reaper_waits_until_heartbeats_can_be_trusted(engine, redis_server):
    subject_id = _subject(engine, _tenant(engine))
    _claim(engine, subject_id)
    _silence(engine, subject_id)
    sched = _scheduler(engine, redis_server, job_stale_after_s=1.0)
    sched.tick()  # just started (or just reconnected): a silent stage may be a worker cut off like us
    with session_scope(engine) as s:
        assert _stage(s, subject_id, "ingest").status == "running"
    time.sleep(1.1)
    sched.tick()
    with session_scope(engine) as s:
        stage = _stage(s, subject_id, "ingest")
        assert stage.status == "queued" and stage.sent_at is not None  # requeued and sent again
    assert redis_server.llen("cpu") >= 1


def test_a_render_waiting_for_its_subject_is_not_due_until_the_subject_succeeds(engine):
    tenant = _tenant(engine)
    subject_id = _subject(engine, tenant)
    with session_scope(engine) as s:
        render, nxt = lifecycle.create_render(s, tenant, s.get(Subject, subject_id), audio_key="k")
        assert nxt == []
    with session_scope(engine) as s:
        assert _stage(s, render.id, "render").ready_at is None
        assert (
            lifecycle.claim(s, "render", render.id, "render", task_id="x", worker="w", stale_after_s=60)
            is None
        )
