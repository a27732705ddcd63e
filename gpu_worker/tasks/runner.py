"""One stage of one job, run by a worker: claim it, run its handler with progress and a heartbeat,
record the outcome, send the next stage. The handlers (``handlers.py``) know storage and the stage
functions; this module knows the database and the queue; the stage functions know neither.

Redelivery is harmless: ``claim`` returns nothing for a finished job or a finished stage, and a stage's
handler resumes (training from its checkpoint in storage; the other stages are short or idempotent).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from shared.db.session import session_scope
from shared.errors import SyncTalkError
from shared.jobs import lifecycle
from shared.jobs.lifecycle import Next
from shared.queue.app import send_stage

log = logging.getLogger(__name__)
PROGRESS_EVERY_S = 1.0  # progress rows and events at most this often (a training step reports often)


class Canceled(Exception):
    """The job was canceled while this stage ran: the stage stops at its next progress report."""


@dataclass(frozen=True)
class StageRun:
    """What a handler gets: the job (a detached snapshot of its row), the stage, and where to report."""

    kind: str
    job: object  # Subject | Render, detached
    stage: str
    progress: Callable[[str, float, str], None]  # (step, fraction of this stage, message)


class _Reporter:
    """The stage's progress callback (throttled writes) and heartbeat thread; both see a cancel."""

    def __init__(self, ctx, kind: str, job_id: str, stage_id: int) -> None:
        self.ctx, self.kind, self.job_id, self.stage_id = ctx, kind, job_id, stage_id
        self.canceled = threading.Event()
        self._stop = threading.Event()
        self._last = 0.0
        self._started = time.monotonic()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._beat, daemon=True, name="stage-heartbeat")

    def __enter__(self) -> _Reporter:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _write(self, fraction: float | None, message: str | None) -> None:
        from shared.db.models import Stage

        with self._lock, session_scope(self.ctx.engine) as s:
            stage = s.get(Stage, self.stage_id)
            frac = stage.progress if fraction is None else fraction
            elapsed = time.monotonic() - self._started
            eta = elapsed * (1 - frac) / frac if 0.01 < frac < 1 else None
            alive = lifecycle.progress(
                s, self.kind, self.job_id, stage, frac, message or stage.message or "", eta
            )
        if not alive:
            self.canceled.set()

    def _beat(self) -> None:
        while not self._stop.wait(self.ctx.settings.job_heartbeat_s):
            try:
                self._write(None, None)
            except Exception:  # noqa: BLE001 - a missed beat is retried; the stage must go on
                log.exception("heartbeat of %s %s failed", self.kind, self.job_id)

    def __call__(self, step: str, fraction: float, message: str) -> None:
        if self.canceled.is_set():
            raise Canceled()
        now = time.monotonic()
        if now - self._last >= PROGRESS_EVERY_S or fraction >= 1.0:
            self._last = now
            self._write(fraction, f"{step}: {message}" if message and step else message or step)
            if self.canceled.is_set():
                raise Canceled()


def run_stage(ctx, kind: str, job_id: str, stage_name: str, task_id: str, handlers: dict) -> str:
    """Run one stage (see the module docstring); returns what happened, for the task's log."""
    from shared.db.models import Stage

    with session_scope(ctx.engine) as s:
        stage = lifecycle.claim(
            s, kind, job_id, stage_name, task_id=task_id, worker=ctx.worker,
            stale_after_s=ctx.settings.job_stale_after_s,
        )  # fmt: skip
        if stage is None:
            return "nothing to do"
        stage_id = stage.id
        job = lifecycle.job_row(s, kind, job_id)
        s.expunge(job)  # a snapshot the handler may read without a session
    handler = handlers[(kind, stage_name)]
    try:
        with _Reporter(ctx, kind, job_id, stage_id) as reporter:
            fields = handler(ctx, StageRun(kind, job, stage_name, reporter)) or {}
    except Canceled:
        with session_scope(ctx.engine) as s:
            lifecycle.acknowledge_cancel(s, kind, job_id)
        return "canceled"
    except SyncTalkError as exc:  # bad input or an unusable file: told to the user, never retried
        with session_scope(ctx.engine) as s:
            lifecycle.fail(s, kind, job_id, exc.code, str(exc))
        return f"failed: {exc.code}"
    except Exception as exc:
        from celery.exceptions import SoftTimeLimitExceeded

        if isinstance(exc, SoftTimeLimitExceeded):
            code, message = "stage_timeout", f"the {stage_name} stage ran past its time limit"
        else:
            log.exception("%s %s: the %s stage crashed", kind, job_id, stage_name)
            code, message = (
                "internal_error",
                f"the {stage_name} stage failed unexpectedly ({type(exc).__name__})",
            )
        with session_scope(ctx.engine) as s:
            lifecycle.fail(s, kind, job_id, code, message)
        return f"failed: {code}"
    with session_scope(ctx.engine) as s:
        nxt = lifecycle.finish_stage(s, kind, job_id, s.get(Stage, stage_id), **fields)
    send_all(ctx, nxt)  # after the commit: a worker that picks them up sees this stage finished
    return "done"


def send_all(ctx, nxt: list[Next]) -> None:
    for n in nxt:
        send_stage(ctx.celery, n.kind, n.job_id, n.stage)
