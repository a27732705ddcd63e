"""What KEDA's redis scaler reads (deploy/helm: ``listName`` = the queue) is exactly the tasks no worker
took yet. A real worker process with the platform's Celery settings, on a Redis of the test's own: while
it runs one task, the queue's list holds every other task sent, never one fewer (a worker reserving
the next task would hide it from the scaler, and a scaled-to-zero queue with one task could stay at
zero). The same worker on Celery's default prefetch (4 per process) takes tasks it does not run: the
settings matter. (With ``acks_late``, prefetch 1 alone already caps a worker's unacknowledged tasks at
its processes; ``worker_disable_prefetch`` keeps that true however the ack setting changes.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
TASKS = 5


def _wait(predicate, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _lengths_while_running(redis_server, tmp_path: Path, prefetch: str, concurrency: int) -> list[int]:
    """Send TASKS tasks to the gpu queue, start a worker, and record the list's length while the first
    ``concurrency`` tasks run (sampled for a second), then after each release."""
    env = {
        **os.environ, "SYNCTALK_BROKER_URL": redis_server.url, "QUEUE_PROBE_PREFETCH": prefetch,
        "PYTHONPATH": os.pathsep.join([str(HERE), str(REPO)]),
    }  # fmt: skip
    os.environ["SYNCTALK_BROKER_URL"] = redis_server.url
    sys.path.insert(0, str(HERE))
    try:
        import importlib

        import queue_probe_app

        app = importlib.reload(queue_probe_app).app
        for n in range(TASKS):
            app.send_task("probe.hold", args=[str(tmp_path), n], queue="gpu", routing_key="gpu")
    finally:
        sys.path.remove(str(HERE))
        os.environ.pop("SYNCTALK_BROKER_URL", None)
    assert redis_server.llen("gpu") == TASKS
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "queue_probe_app", "worker", "-Q", "gpu", "-c", str(concurrency),
         "-P", "prefork", "--without-gossip", "--without-mingle", "--loglevel", "WARNING"],
        env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    seen: list[int] = []
    try:
        started = lambda: sum((tmp_path / f"started-{n}").exists() for n in range(TASKS))  # noqa: E731
        _wait(lambda: started() >= concurrency, "the first tasks to start")
        for _ in range(20):  # a second: any reservation beyond the running tasks shows by then
            seen.append(redis_server.llen("gpu"))
            time.sleep(0.05)
        (tmp_path / "release-0").touch()
        _wait(lambda: started() >= concurrency + 1, "the next task to start")
        time.sleep(0.5)
        seen.append(redis_server.llen("gpu"))
        for n in range(1, TASKS):
            (tmp_path / f"release-{n}").touch()
        _wait(lambda: redis_server.llen("gpu") == 0 and started() == TASKS, "the queue to drain")
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(20)
        except subprocess.TimeoutExpired:
            worker.kill()
    return seen


@pytest.mark.parametrize("concurrency", [1, 2])
def test_the_queue_list_holds_exactly_the_tasks_no_worker_took(redis_server, tmp_path, concurrency):
    seen = _lengths_while_running(redis_server, tmp_path, "platform", concurrency)
    assert set(seen[:-1]) == {TASKS - concurrency}, seen  # all the others wait where the scaler sees them
    assert seen[-1] == TASKS - concurrency - 1, seen  # one released: the next one taken, no more


def test_celerys_default_would_hide_a_task_from_the_scaler(redis_server, tmp_path):
    seen = _lengths_while_running(redis_server, tmp_path, "celery-default", 1)
    assert max(seen[:-1]) < TASKS - 1, seen  # the worker holds tasks it is not running: hidden from KEDA
