"""A job survives a worker killed mid-stage: the GPU worker is killed (SIGKILL, its whole process group)
while the subject trains; a new one starts; the scheduler's reaper requeues the stage once its
heartbeat is stale; training resumes from the checkpoint in storage (not from step 0), and the
subject succeeds with its train stage run twice and every other stage once."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import httpx
import pytest
from platform_helpers import REPO, free_port, platform_env, synctalk, wait_for

STEP = re.compile(r"step (\d+)/(\d+)")


def _start(env: dict, log, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "services.cli.main", *args], env=env, cwd=REPO, stdout=log,
        stderr=subprocess.STDOUT, start_new_session=True,  # its own process group: killed as a whole
    )  # fmt: skip


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


@pytest.mark.slow
def test_training_resumes_on_a_new_worker_after_one_is_killed(sample_subject, tmp_path):
    port = free_port()
    env = platform_env(
        tmp_path / "data", port, job_heartbeat_s="1", job_stale_after_s="6", train_steps_scale="8"
    )  # tiny x 8: about 770 steps, checkpoints every 10: long enough to be killed in the middle
    synctalk(env, "migrate")
    key = synctalk(env, "keys", "create", "--tenant", "studio").strip().splitlines()[-1]
    log = open(tmp_path / "platform.log", "wb")  # noqa: SIM115
    procs = [
        _start(env, log, "api", "--port", str(port)),
        _start(env, log, "scheduler"),
        _start(env, log, "worker", "--queues", "cpu", "--name", "cpu@test"),
    ]
    gpu = _start(env, log, "worker", "--queues", "gpu", "--name", "gpu1@test")
    try:
        client = httpx.Client(
            base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {key}"}, timeout=60
        )
        for _ in range(120):
            try:
                if client.get("/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        with open(sample_subject.video, "rb") as fh:
            subject = client.post("/v1/subjects", files={"video": ("ann.mp4", fh, "video/mp4")}).json()
        path = f"/v1/subjects/{subject['id']}"

        killed_at = None  # the training step reached when the worker was killed
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            doc = client.get(path).json()
            assert doc["status"] in ("queued", "running"), doc
            m = STEP.search(doc.get("message") or "")
            if doc["stage"] == "train" and m and int(m.group(1)) > 0.3 * int(m.group(2)):
                killed_at = int(m.group(1))
                _kill(gpu)
                break
            time.sleep(0.3)
        assert killed_at, "training never got far enough to be interrupted"
        gpu = _start(env, log, "worker", "--queues", "gpu", "--name", "gpu2@test")

        # the first progress of the second run reports a step past the last checkpoint, not step 0
        resumed_at = None
        while time.monotonic() < deadline and resumed_at is None:
            doc = client.get(path).json()
            train = next(s for s in doc["stages"] if s["name"] == "train")
            m = STEP.search(train.get("message") or "")
            if doc["status"] == "running" and m and "queued again" not in (train["message"] or ""):
                step = int(m.group(1))
                if step != killed_at:  # a report from the new worker
                    resumed_at = step
            if doc["status"] in ("succeeded", "failed"):
                break
            time.sleep(0.3)
        done = wait_for(client, path, timeout=900)
        assert done["status"] == "succeeded", done
        print("killed at step", killed_at, "first report of the new worker", resumed_at)
        assert resumed_at is not None and resumed_at >= killed_at - 10, (killed_at, resumed_at)

        from sqlalchemy import select

        from shared.db.models import Stage
        from shared.db.session import make_engine, session_scope
        from shared.settings import Settings

        engine = make_engine(Settings(data_dir=tmp_path / "data"))
        with session_scope(engine) as s:
            attempts = dict(
                s.execute(select(Stage.name, Stage.attempts).where(Stage.job_id == subject["id"])).all()
            )
        engine.dispose()
        assert attempts == {"ingest": 1, "preprocess": 1, "train": 2}, attempts
    except BaseException:
        log.flush()
        print((tmp_path / "platform.log").read_text(errors="replace")[-8000:])
        raise
    finally:
        for p in [*procs, gpu]:
            _kill(p)
        log.close()
