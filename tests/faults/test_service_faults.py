"""The services under the platform fail: storage and the database unreachable for 30 s each while a
subject trains, the broker restarted empty with tasks in it, the same task delivered twice at once, and
a render that kills its worker every time it runs (a poison pill). One platform serves the module (the
tests run in order: the first trains the subject the others render).

What each asserts: every job ends as it should; nothing is repeated that a fault did not force (a stage
runs once through an outage, a lost task is sent again and runs once, a duplicate finds the stage
taken); outputs are written once; nothing stays queued or running; a poison pill ends failed with
``worker_lost`` after ``job_max_attempts`` runs and the worker it killed keeps serving."""

from __future__ import annotations

import threading
import time
import wave

import pytest
import redis
from scenario import (
    assert_settled,
    assert_written_once,
    create_render,
    create_subject,
    restart_worker,
    stage,
    start_platform,
    subject_outputs,
    tenant_of,
    wait_running,
)
from stack import Stack, wait_until

pytestmark = [pytest.mark.faults, pytest.mark.slow]
OUTAGE_S = 30


@pytest.fixture(scope="module")
def platform(request, tmp_path_factory, postgres_url):
    from stack import redis_server_binary

    redis_server_binary()
    stack = Stack(tmp_path_factory.mktemp("service-faults"), postgres_url=postgres_url, train_steps_scale=4)
    try:
        stack.up()
        stack.start_api()
        start_platform(stack)
        stack.facts = {}
        yield stack
    except BaseException:
        print(stack.tail_logs(80))
        raise
    finally:
        if request.session.testsfailed:
            print(stack.tail_logs(80))
        stack.stop_all()


@pytest.fixture(scope="module")
def postgres_url() -> str:
    from stack import ServiceMissing, postgres_server_url

    try:
        return postgres_server_url()
    except ServiceMissing as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def short_speech(sample_subject, tmp_path_factory):
    """Two seconds of the sample's speech: renders that take seconds, not minutes."""
    out = tmp_path_factory.mktemp("speech") / "line.wav"
    with wave.open(str(sample_subject.speech), "rb") as src, wave.open(str(out), "wb") as dst:
        dst.setparams(src.getparams())
        dst.writeframes(src.readframes(int(src.getframerate() * 2.0)))
    return out


def test_a_subject_trains_through_a_storage_and_a_database_outage(platform, sample_subject):
    stack = platform
    subject_id = create_subject(stack, sample_subject.video)
    wait_running(stack, subject_id, "train", progress=0.1)
    # storage first: the next checkpoint publish waits it out (training pauses at that step)
    stack.s3_proxy.outage(OUTAGE_S)
    # then the database: training goes on unrecorded; the heartbeat and the outcome wait for it
    stack.db_proxy.outage(OUTAGE_S)
    done = stack.wait_for(f"/v1/subjects/{subject_id}", timeout=900)
    assert done["status"] == "succeeded", done
    attempts = {s["name"]: s["attempts"] for s in stack.stages(subject_id)}
    assert attempts == {"ingest": 1, "preprocess": 1, "train": 1}, attempts  # nothing was reaped or redone
    tenant = tenant_of(stack, subject_id)
    assert_written_once(stack, subject_outputs(stack, tenant, subject_id))
    assert_settled(stack, [subject_id])
    gpu_log = stack.output("gpu")
    assert "retrying for up to" in gpu_log  # storage requests waited the outage out
    assert "not recorded" in gpu_log or "heartbeat of subject" in gpu_log  # and the database's
    stack.facts.update(subject_id=subject_id, tenant=tenant)


def _render_outputs(stack: Stack, render_id: str) -> list[str]:
    tenant = stack.facts["tenant"]
    return [
        f"tenants/{tenant}/renders/{render_id}/video.mp4",
        f"tenants/{tenant}/renders/{render_id}/qc.json",
    ]


def test_tasks_lost_by_a_broker_restarted_empty_are_sent_again_and_run_once(platform, short_speech):
    stack = platform
    subject_id = stack.facts["subject_id"]
    stack.kill("gpu")  # nobody takes the tasks: they wait in Redis
    renders = [create_render(stack, subject_id, short_speech, ref=f"r{i}") for i in range(2)]
    broker = redis.Redis.from_url(stack.redis.url)
    wait_until(lambda: broker.llen("gpu") == 2, 10, what="both tasks waiting in Redis")
    stack.redis_restart()  # empty: both tasks are gone
    restart_worker(stack, "gpu")
    for render_id in renders:
        done = stack.wait_for(f"/v1/renders/{render_id}", timeout=300)
        assert done["status"] == "succeeded", done
        assert stage(stack, render_id, "render")["attempts"] == 1
        assert_written_once(stack, _render_outputs(stack, render_id))
    assert "lost by the broker" in stack.output("scheduler")
    assert_settled(stack, renders)


def test_a_worker_without_its_database_takes_no_work_and_loses_none(platform, short_speech):
    """Before: a worker whose claim failed acked the task, draining the queue in milliseconds while
    every stage stayed queued for good. Now it holds one task and waits for the database."""
    stack = platform
    stack.kill("gpu")
    renders = [
        create_render(stack, stack.facts["subject_id"], short_speech, ref=f"nodb{i}") for i in range(3)
    ]
    broker = redis.Redis.from_url(stack.redis.url)
    wait_until(lambda: broker.llen("gpu") == 3, 10, what="three tasks waiting in Redis")
    stack.db_proxy.cut()
    try:
        stack.start("gpu", "worker", "--queues", "gpu", "--name", "gpu@faults")
        stack.wait_log("gpu", "ready.", timeout=120)
        time.sleep(8)
        assert broker.llen("gpu") >= 2, "the worker drained tasks it could not claim"
        assert "waiting for the database" in stack.output("gpu")
    finally:
        stack.db_proxy.restore()
    for render_id in renders:
        assert stack.wait_for(f"/v1/renders/{render_id}", timeout=300)["status"] == "succeeded"
        assert stage(stack, render_id, "render")["attempts"] == 1
    assert_settled(stack, renders)


def test_the_same_task_delivered_twice_at_once_runs_once(platform, short_speech):
    from shared.queue.app import make_celery, send_stage
    from shared.settings import Settings

    stack = platform
    stack.kill("gpu")
    render_id = create_render(stack, stack.facts["subject_id"], short_speech, ref="twice")
    send_stage(make_celery(Settings(broker_url=stack.redis.url)), "render", render_id, "render")
    # two workers start together and take one copy each
    stack.start("gpu", "worker", "--queues", "gpu", "--name", "gpu@faults")
    stack.start("gpu2", "worker", "--queues", "gpu", "--name", "gpu2@faults")
    done = stack.wait_for(f"/v1/renders/{render_id}", timeout=300)
    assert done["status"] == "succeeded", done
    assert stage(stack, render_id, "render")["attempts"] == 1
    assert_written_once(stack, _render_outputs(stack, render_id))
    wait_until(lambda: "'nothing to do'" in stack.output("gpu") + stack.output("gpu2"), 60)
    stack.kill("gpu2")
    assert_settled(stack, [render_id])


def test_a_render_that_kills_its_worker_every_time_fails_after_its_attempts(platform, short_speech):
    """A poison pill: each time the render runs, its worker process dies (as an out-of-memory kill does).
    Celery hands the task straight back; the claim counts the runs and gives up at job_max_attempts."""
    stack = platform
    render_id = create_render(stack, stack.facts["subject_id"], short_speech, ref="poison")
    killed: list[int] = []
    stop = threading.Event()

    def killer() -> None:  # the out-of-memory killer, aimed at whatever process runs this render
        while not stop.is_set():
            row = stage(stack, render_id, "render")
            if row["status"] == "running" and row["worker"]:
                pid = int(row["worker"].rsplit(":", 1)[1])
                if pid not in killed:
                    Stack.kill_pid(pid)
                    killed.append(pid)
            if row["status"] in ("failed", "succeeded"):
                return
            time.sleep(0.05)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        done = stack.wait_for(f"/v1/renders/{render_id}", timeout=300)
    finally:
        stop.set()
        thread.join(5)
    assert done["status"] == "failed" and done["error"]["code"] == "worker_lost", done
    assert "3 times" in done["error"]["message"], done
    assert stage(stack, render_id, "render")["attempts"] == 3 and len(killed) == 3
    assert stack.alive("gpu"), "the worker's main process must survive its children's deaths"
    # the worker that lost three children still serves the next render
    render_ok = create_render(stack, stack.facts["subject_id"], short_speech, ref="after")
    assert stack.wait_for(f"/v1/renders/{render_ok}", timeout=300)["status"] == "succeeded"
    assert_settled(stack, [render_id, render_ok])
