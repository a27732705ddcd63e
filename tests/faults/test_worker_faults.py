"""Workers lost in every stage, and one asked to stop mid-train, on the real stack (PostgreSQL, Redis, S3).

One subject and one render go through while: the cpu worker is SIGKILLed during ingest and during
preprocessing, the gpu worker gets SIGTERM during training (as Kubernetes evicts a pod) and later a
SIGKILL in the same stage, and the gpu worker is SIGKILLed during the render. Each time a new worker
starts. Both jobs must succeed; each killed stage ran exactly twice (the SIGTERM handed its stage back
without counting an attempt, after a checkpoint the next run resumed from); every output was written
once; nothing is left queued or running."""

from __future__ import annotations

import time

import pytest
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
    train_step,
    wait_running,
)

pytestmark = [pytest.mark.faults, pytest.mark.slow]


@pytest.mark.faults(train_steps_scale=6)  # tiny x 6: long enough to be interrupted twice mid-train
def test_a_subject_and_a_render_survive_workers_killed_in_every_stage(stack, sample_subject):
    start_platform(stack)
    # storage slowed down while the upload is ingested, so the ingest stage lasts long enough to be killed
    stack.s3_proxy.bandwidth = max(50_000, sample_subject.video.stat().st_size / 4)
    subject_id = create_subject(stack, sample_subject.video)

    wait_running(stack, subject_id, "ingest")
    stack.kill("cpu")  # the machine is gone, mid-stage
    stack.s3_proxy.bandwidth = None
    restart_worker(stack, "cpu")

    wait_running(stack, subject_id, "preprocess", progress=0.2)
    stack.kill("cpu")
    restart_worker(stack, "cpu")

    row = wait_running(stack, subject_id, "train", progress=0.3)
    stack.term("gpu")  # Kubernetes evicts the pod: the stage must be handed back, promptly
    started = time.monotonic()
    assert stack.wait_exit("gpu", timeout=60) == 0
    print(f"gpu worker exited {time.monotonic() - started:.1f} s after SIGTERM")
    handed = stage(stack, subject_id, "train")
    # handed back: queued again, the lease dropped, and this run not counted as an attempt
    assert handed["status"] == "queued" and handed["attempts"] == 0 and handed["lease"] is None, handed
    assert "shut down" in (handed["message"] or ""), handed
    tenant = tenant_of(stack, subject_id)
    assert stack.list_keys(f"tenants/{tenant}/subjects/{subject_id}/checkpoint/"), "no checkpoint was kept"
    stopped_at = train_step(row)

    restart_worker(stack, "gpu")
    resumed = wait_running(stack, subject_id, "train", progress=0.55)
    assert train_step(resumed) > stopped_at
    stack.kill("gpu")  # and now lost for good, in the same stage
    restart_worker(stack, "gpu")

    done = stack.wait_for(f"/v1/subjects/{subject_id}", timeout=900)
    assert done["status"] == "succeeded", done

    render_id = create_render(stack, subject_id, sample_subject.speech)
    wait_running(stack, render_id, "render", progress=0.05)
    stack.kill("gpu")
    restart_worker(stack, "gpu")
    rendered = stack.wait_for(f"/v1/renders/{render_id}", timeout=600)
    assert rendered["status"] == "succeeded", rendered

    attempts = {s["name"]: s["attempts"] for s in stack.stages(subject_id) + stack.stages(render_id)}
    assert attempts == {"ingest": 2, "preprocess": 2, "train": 2, "render": 2}, attempts
    assert_settled(stack, [subject_id, render_id])
    assert_written_once(
        stack,
        subject_outputs(stack, tenant, subject_id)
        + [
            f"tenants/{tenant}/renders/{render_id}/video.mp4",
            f"tenants/{tenant}/renders/{render_id}/qc.json",
        ],
    )
