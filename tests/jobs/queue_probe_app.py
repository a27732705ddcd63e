"""A Celery app built by the platform's own ``make_celery`` (same queues, prefetch and acks settings as
the workers), with one task that holds its process until the test lets it go: what the queue-list test
runs in a real worker process. The broker comes from SYNCTALK_BROKER_URL."""

from __future__ import annotations

import os
import time
from pathlib import Path

from shared.queue.app import make_celery
from shared.settings import Settings

app = make_celery(Settings(broker_url=os.environ["SYNCTALK_BROKER_URL"]))
if os.environ.get("QUEUE_PROBE_PREFETCH") == "celery-default":  # Celery's own defaults instead of ours
    app.conf.worker_prefetch_multiplier = 4
    app.conf.worker_disable_prefetch = False


@app.task(name="probe.hold")
def hold(marker_dir: str, n: int) -> None:
    """Say "started n", then wait until the test writes "release n" (at most a minute)."""
    folder = Path(marker_dir)
    (folder / f"started-{n}").touch()
    deadline = time.monotonic() + 60
    while not (folder / f"release-{n}").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
