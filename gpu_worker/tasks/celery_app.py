"""The worker's Celery app: ``celery -A gpu_worker.tasks.celery_app worker -Q cpu,gpu`` (what
``synctalk worker`` runs). Importing it checks that every stage has a handler."""

from __future__ import annotations

import logging
import threading
import time

from celery.signals import worker_ready, worker_shutdown

from gpu_worker.tasks.context import worker_context
from gpu_worker.tasks.handlers import HANDLERS, check_handlers
from gpu_worker.tasks.runner import run_stage, send_all
from shared.queue.app import TASK_RUN_STAGE, make_celery
from shared.settings import get_settings

log = logging.getLogger(__name__)
WEBHOOKS_EVERY_S = 2.0  # how soon a state change reaches a webhook (the reaper runs less often)
check_handlers()
app = make_celery(get_settings())


@app.task(name=TASK_RUN_STAGE, bind=True)
def run_stage_task(self, kind: str, job_id: str, stage: str) -> str:
    return run_stage(worker_context(app), kind, job_id, stage, self.request.id, HANDLERS)


_maintenance_stop = threading.Event()


def maintenance_once(ctx) -> int:
    """Requeue (or fail) stages whose worker stopped heartbeating; returns how many were requeued."""
    from shared.db.session import session_scope
    from shared.jobs.lifecycle import reap

    with session_scope(ctx.engine) as s:
        nxt = reap(
            s, stale_after_s=ctx.settings.job_stale_after_s, max_attempts=ctx.settings.job_max_attempts
        )
    send_all(ctx, nxt)
    return len(nxt)


def _maintenance_loop() -> None:
    from shared.jobs.webhooks import deliver_due

    ctx = worker_context(app)
    reap_every = max(5.0, ctx.settings.job_stale_after_s / 4)
    last_reap = 0.0
    while not _maintenance_stop.wait(WEBHOOKS_EVERY_S):
        try:
            deliver_due(ctx.engine)  # signed POSTs of the state changes webhooks asked for, retried
            if time.monotonic() - last_reap >= reap_every:
                last_reap = time.monotonic()
                requeued = maintenance_once(ctx)
                if requeued:
                    log.warning("requeued %d stage(s) whose worker stopped responding", requeued)
        except Exception:  # noqa: BLE001 - maintenance must outlive a database hiccup
            log.exception("maintenance pass failed")


@worker_ready.connect
def _start_maintenance(**_kwargs) -> None:
    # every worker runs the reaper: row locks (Postgres) keep two from requeuing one stage, and a stage
    # requeued twice is harmless (the second claim finds it running)
    threading.Thread(target=_maintenance_loop, daemon=True, name="maintenance").start()


@worker_shutdown.connect
def _stop_maintenance(**_kwargs) -> None:
    _maintenance_stop.set()
