"""What the fault scenarios share: jobs submitted through the API, stages watched in the database, and
the assertions every scenario ends with (every job ended as it should, nothing left queued or running,
each stage's outputs written once)."""

from __future__ import annotations

import re
from pathlib import Path

from stack import Stack, wait_until

STEP = re.compile(r"step (\d+)/(\d+)")


def start_platform(stack: Stack, *, gpu_workers: int = 1) -> None:
    """The scheduler and a worker per queue (more gpu workers on demand), each waited for."""
    stack.start_scheduler()
    stack.start_worker("cpu")
    names = ["gpu"] + [f"gpu{i}" for i in range(2, gpu_workers + 1)]
    for name in names:
        stack.start(name, "worker", "--queues", "gpu", "--name", f"{name}@faults")
    for name in ["cpu", *names]:
        stack.wait_log(name, "ready.", timeout=120)


def restart_worker(stack: Stack, name: str) -> None:
    stack.restart(name)
    stack.wait_log(name, "ready.", timeout=120)


def create_subject(stack: Stack, video: Path, name: str = "Ann") -> str:
    with open(video, "rb") as fh:
        r = stack.client.post(
            "/v1/subjects", files={"video": (video.name, fh, "video/mp4")}, data={"name": name}, timeout=120
        )
    assert r.status_code == 202, r.text
    return r.json()["id"]


def create_render(stack: Stack, subject_id: str, audio: Path, ref: str = "line") -> str:
    with open(audio, "rb") as fh:
        r = stack.client.post(
            f"/v1/subjects/{subject_id}/renders", files={"audio": (audio.name, fh, "audio/wav")},
            data={"ref": ref}, timeout=120,
        )  # fmt: skip
    assert r.status_code == 202, r.text
    return r.json()["id"]


def stage(stack: Stack, job_id: str, name: str) -> dict:
    return next(s for s in stack.stages(job_id) if s["name"] == name)


def wait_running(
    stack: Stack, job_id: str, name: str, *, progress: float = 0.0, timeout: float = 300
) -> dict:
    """The stage's row once it runs past ``progress`` (0..1 of the stage)."""

    def running() -> dict | None:
        row = stage(stack, job_id, name)
        if row["status"] in ("succeeded", "failed", "canceled"):
            raise AssertionError(f"the {name} stage ended ({row['status']}) before it could be interrupted")
        return row if row["status"] == "running" and row["progress"] >= progress else None

    return wait_until(running, timeout, every=0.1, what=f"{name} of {job_id} running past {progress:.0%}")


def train_step(row: dict) -> int:
    m = STEP.search(row.get("message") or "")
    return int(m.group(1)) if m else 0


def assert_settled(stack: Stack, job_ids: list[str]) -> None:
    """Nothing of these jobs stays queued or running, and no stage keeps a lease."""
    for job_id in job_ids:
        for row in stack.stages(job_id):
            assert row["lease"] is None, (job_id, row)
            if row["status"] == "queued":
                assert row["ready_at"] is None, f"{job_id}: {row['name']} is due but nobody runs it: {row}"
            assert row["status"] != "running", (job_id, row)


def assert_written_once(stack: Stack, keys: list[str]) -> None:
    for key in keys:
        assert stack.object_versions(key) == 1, f"{key} was written {stack.object_versions(key)} times"


def subject_outputs(stack: Stack, tenant_id: str, subject_id: str) -> list[str]:
    """Every object a subject's stages publish once (not the checkpoint: it is published as it goes)."""
    prefix = f"tenants/{tenant_id}/subjects/{subject_id}/"
    keys = stack.list_keys(prefix)
    assert any(k.startswith(prefix + "source.") for k in keys) and prefix + "model/model.pt" in keys, keys
    return [k for k in keys if "/checkpoint/" not in k and not k.endswith("curves.json")]


def tenant_of(stack: Stack, subject_id: str) -> str:
    return stack.db("SELECT tenant_id FROM subjects WHERE id = :id", id=subject_id)[0]["tenant_id"]
