"""The worker's Celery app: ``celery -A gpu_worker.tasks.celery_app worker -Q cpu,gpu`` (what
``synctalk worker`` runs). Importing it checks that every stage has a handler.

Workers only run stages. Reaping lost stages, re-sending lost tasks, webhooks and retention belong to
``synctalk scheduler`` (shared/jobs/scheduler.py): with GPU workers scaled to zero they still happen.
A worker does report itself (``workers`` table: its queues and accelerator) so that the API can pick
the default training profile.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading

from celery.exceptions import Reject
from celery.signals import (
    after_setup_logger,
    after_setup_task_logger,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
    worker_shutdown,
    worker_shutting_down,
)

from gpu_worker.tasks import shutdown
from gpu_worker.tasks.context import worker_context
from gpu_worker.tasks.handlers import HANDLERS, check_handlers
from gpu_worker.tasks.runner import HandBack, housekeep, run_stage
from gpu_worker.tasks.spans import record_outcome, stage_span
from shared import telemetry
from shared.queue.app import TASK_RUN_STAGE, make_celery
from shared.settings import get_settings

log = logging.getLogger(__name__)
REPORT_EVERY_S = 60.0  # how often a worker refreshes its row in the workers table
check_handlers()
app = make_celery(get_settings())


@app.task(name=TASK_RUN_STAGE, bind=True)
def run_stage_task(self, kind: str, job_id: str, stage: str) -> str:
    telemetry.setup(get_settings(), "synctalk-worker")  # done at the fork (below); here for other pools
    ctx = worker_context(app)
    with stage_span(self.request, kind, job_id, stage) as span:
        try:
            outcome = run_stage(ctx, kind, job_id, stage, self.request.id, HANDLERS)
        except HandBack:  # asked to stop before the stage could be claimed: the message goes back
            outcome = "handed back before its claim"
        record_outcome(span, outcome)
        log.info("%s %s: %s stage: %s", kind, job_id, stage, outcome)  # with the stage's ids and trace
    if outcome == "handed back before its claim":
        raise Reject("the worker is shutting down", requeue=True)
    housekeep(ctx)  # outside the stage's span: not the job's work
    return outcome


@worker_process_init.connect
def _child_started(**_kwargs) -> None:
    shutdown.install()  # the main process forwards SIGTERM to us as shutdown.SIGNAL
    # tracing starts in each pool process, after the fork: its exporter thread lives where it is used
    telemetry.setup(get_settings(), "synctalk-worker")


@worker_process_shutdown.connect
def _child_stopping(**_kwargs) -> None:
    telemetry.flush()  # a pool process may leave without running atexit hooks: export what is buffered


@after_setup_logger.connect
@after_setup_task_logger.connect
def _log_format(**_kwargs) -> None:
    telemetry.configure_logging(get_settings())  # JSON lines when log_format is json


@worker_shutting_down.connect
def _shutting_down(**_kwargs) -> None:
    shutdown.forward_to_children()


_report_stop = threading.Event()


def accelerator() -> str | None:
    """'cuda: <device name>' when this machine's torch sees a CUDA GPU, else None. Asked in a child
    process: CUDA initialized in the worker's main process would break the forked pool processes."""
    probe = "import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
    try:
        out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return None
    name = out.stdout.strip().splitlines()[-1] if out.returncode == 0 and out.stdout.strip() else ""
    return f"cuda: {name}"[:200] if name else None


def _report(name: str, queues: str) -> None:
    """Keep this worker's row fresh (the API's default profile reads it)."""
    from shared.db.models import WorkerInfo, utcnow
    from shared.db.session import session_scope

    ctx = worker_context(app)
    device = accelerator() if "gpu" in queues.split(",") else None
    started = utcnow()
    while True:
        try:
            with session_scope(ctx.engine) as s:
                s.merge(WorkerInfo(name=name[:200], queues=queues, accelerator=device, started_at=started,
                                   seen_at=utcnow()))  # fmt: skip
        except Exception as exc:  # noqa: BLE001 -- the database may be away; the next report says it
            log.warning("worker report failed: %s", exc)
        if _report_stop.wait(REPORT_EVERY_S):
            return


@worker_ready.connect
def _start_report(sender=None, **_kwargs) -> None:
    name = getattr(sender, "hostname", None) or "worker"
    queues = ",".join(sorted(q.name for q in getattr(getattr(sender, "task_consumer", None), "queues", [])))
    queues = queues or ",".join(q.name for q in app.amqp.queues.consume_from.values())
    threading.Thread(target=_report, args=(name, queues), daemon=True, name="worker-report").start()


@worker_shutdown.connect
def _stop_report(**_kwargs) -> None:
    _report_stop.set()
