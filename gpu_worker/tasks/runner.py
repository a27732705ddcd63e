"""One stage of one job, run by a worker: claim it (a new lease), run its handler with progress and a
heartbeat, record the outcome, send the next stage. The handlers (``handlers.py``) know storage and the
stage functions; this module knows the database and the queue; the stage functions know neither.

What can go wrong, and what happens (docs/PLATFORM.md "Guarantees"):

- the task is delivered twice, or again after its stage finished: the claim finds the stage taken by a
  live owner, or done, and the task ends;
- the database is unreachable: the claim waits for it (the worker holds its one message and takes no
  other), progress and heartbeats are skipped until it is back, the outcome is retried;
- storage or the database stay unreachable past ``transient_retry_s`` inside a stage: the stage is handed
  back to the queue (an attempt counted), to run again later without redoing what is stored;
- the worker is asked to stop (SIGTERM): training checkpoints, the stage is handed back without counting
  an attempt, and the task ends;
- the reaper gave the stage to another worker (this one was silent too long): the next write here finds
  the lease gone, and this run stops without recording anything;
- bad input (a typed ``SyncTalkError`` that is not transient): the job fails at once with its code.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from opentelemetry import trace
from sqlalchemy.orm import Session, sessionmaker

from gpu_worker.tasks import shutdown
from shared import telemetry
from shared.db.session import session_scope
from shared.errors import SyncTalkError
from shared.jobs import dispatch, lifecycle
from shared.jobs.lifecycle import LeaseLost, Next
from shared.storage.retrying import backoff_delays, retry_transient
from shared.transient import describe, is_transient

log = logging.getLogger(__name__)
PROGRESS_EVERY_S = 1.0  # progress rows and events at most this often (a training step reports often)
UNAVAILABLE_DELAY_S = 30.0  # a stage handed back for an outage is due again after this long


class Canceled(Exception):
    """The job was canceled while this stage ran: the stage stops at its next progress report."""


class HandBack(Exception):
    """The worker is shutting down: the stage stops here (training after a checkpoint) and is queued
    again for another worker."""


@dataclass(frozen=True)
class StageRun:
    """What a handler gets: the job (a detached snapshot of its row), the stage, where to report, and
    ``check()`` (raise if this run must stop: canceled, lease lost, shutting down), called before it
    stores a result."""

    kind: str
    job: object  # Subject | Render, detached
    stage: str
    progress: Callable[[str, float, str], None]  # (step, fraction of this stage, message)
    check: Callable[[], None] = lambda: None
    stopping: Callable[[], bool] = lambda: False  # a shutdown was asked: checkpoint and stop soon


def _db(ctx, what: str, fn: Callable[[Session], object], *, budget_s: float | None = None):
    """``fn(session)`` in a transaction, retried through transient database errors for ``budget_s``
    (default ``transient_retry_s``)."""
    budget = ctx.settings.transient_retry_s if budget_s is None else budget_s

    def once():
        with session_scope(ctx.engine) as s:
            return fn(s)

    return retry_transient(once, budget, f"database {what}", is_transient=is_transient)


class _Reporter:
    """The stage's progress callback (throttled, fenced writes) and heartbeat thread; both notice a
    cancel, a lost lease and a shutdown. A write that fails because the database is away is skipped
    (the stage goes on); the next one tries again."""

    def __init__(self, ctx, kind: str, job_id: str, stage_id: int, lease: str) -> None:
        self.ctx, self.kind, self.job_id, self.stage_id, self.lease = ctx, kind, job_id, stage_id, lease
        self.canceled = threading.Event()
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._last = 0.0
        self._last_write = time.monotonic()
        self._started = time.monotonic()
        self._lock = threading.Lock()
        # the heartbeat thread logs with the stage's ids (a copy of this context)
        run_in_context = contextvars.copy_context().run
        self._thread = threading.Thread(target=run_in_context, args=(self._beat,), daemon=True,
                                        name="stage-heartbeat")  # fmt: skip

    def __enter__(self) -> _Reporter:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _write(self, fraction: float, message: str) -> None:
        # up to one write a second for hours: not a span each (telemetry.untraced)
        with self._lock, telemetry.untraced(), session_scope(self.ctx.engine) as s:
            stage = lifecycle.owned_stage(s, self.stage_id, self.lease, lock=True)
            elapsed = time.monotonic() - self._started
            eta = elapsed * (1 - fraction) / fraction if 0.01 < fraction < 1 else None
            alive = lifecycle.progress(s, self.kind, self.job_id, stage, fraction, message, eta)
            self._last_write = time.monotonic()
        if not alive:
            self.canceled.set()

    def _beat(self) -> None:
        every = self.ctx.settings.job_heartbeat_s
        while not self._stop.wait(every):
            if time.monotonic() - self._last_write < every * 0.9:
                continue  # a progress write was a heartbeat too
            try:
                with self._lock, telemetry.untraced(), session_scope(self.ctx.engine) as s:
                    if not lifecycle.heartbeat(s, self.stage_id, self.lease):
                        self.lost.set()
                    self._last_write = time.monotonic()
            except Exception as exc:  # noqa: BLE001 -- a missed beat is retried; the stage must go on
                log.warning("heartbeat of %s %s failed: %s", self.kind, self.job_id, describe(exc))

    def check(self) -> None:
        """Raise if this run must stop now."""
        if self.lost.is_set():
            raise LeaseLost("the reaper gave this stage to another worker")
        if self.canceled.is_set():
            raise Canceled()
        if shutdown.REQUESTED.is_set():
            raise HandBack()

    def confirm_owned(self) -> None:
        """``check()``, then ask the database whether this run still owns the stage (before a result is
        stored: an owner the reaper replaced must not overwrite the new owner's outputs)."""
        self.check()

        def owned(s: Session) -> None:
            lifecycle.owned_stage(s, self.stage_id, self.lease)

        try:
            _db(self.ctx, "lease check", owned)
        except LeaseLost:
            self.lost.set()
            raise

    def __call__(self, step: str, fraction: float, message: str) -> None:
        self.check()
        now = time.monotonic()
        if now - self._last >= PROGRESS_EVERY_S or fraction >= 1.0:
            self._last = now
            text = f"{step}: {message}" if message and step else message or step
            try:
                self._write(fraction, text)
            except LeaseLost:
                self.lost.set()
            except Exception as exc:
                if not is_transient(exc):
                    raise
                log.warning("progress of %s %s not recorded: %s", self.kind, self.job_id, describe(exc))
            self.check()


def _claim(ctx, kind: str, job_id: str, stage_name: str, task_id: str):
    """(stage id, lease, detached job row) or None. Waits for an unreachable database (the worker holds
    this message meanwhile and takes no other) until it answers or the worker is asked to stop."""

    def claim(s: Session):
        stage = lifecycle.claim(
            s, kind, job_id, stage_name, task_id=task_id, worker=ctx.worker,
            stale_after_s=ctx.settings.job_stale_after_s, max_attempts=ctx.settings.job_max_attempts,
        )  # fmt: skip
        if stage is None:
            return None
        trace.get_current_span().set_attribute("synctalk.attempt", stage.attempts)
        job = lifecycle.job_row(s, kind, job_id)
        s.flush()
        s.expunge(job)  # a snapshot the handler may read without a session
        return stage.id, stage.lease, job

    for wait in backoff_delays(float("inf"), cap_s=10.0):
        try:
            with session_scope(ctx.engine) as s:
                return claim(s)
        except Exception as exc:
            if not is_transient(exc):
                raise
            if shutdown.REQUESTED.is_set():
                raise HandBack() from exc
            log.warning("cannot claim %s %s %s: %s; waiting for the database", kind, job_id, stage_name,
                        describe(exc))  # fmt: skip
            time.sleep(wait)
    return None  # pragma: no cover - the delays never run out


def run_stage(ctx, kind: str, job_id: str, stage_name: str, task_id: str, handlers: dict) -> str:
    """Run one stage (see the module docstring); returns what happened, for the task's log."""
    claimed = _claim(ctx, kind, job_id, stage_name, task_id)
    if claimed is None:
        return "nothing to do"
    stage_id, lease, job = claimed
    telemetry.bind_tenant(job.tenant_id)  # the stage's span and log lines name the tenant
    handler = handlers[(kind, stage_name)]
    try:
        with (
            ctx.cache.using(*_cache_entries(kind, job)),
            _Reporter(ctx, kind, job_id, stage_id, lease) as reporter,
        ):
            run = StageRun(kind, job, stage_name, reporter, reporter.confirm_owned,
                           shutdown.REQUESTED.is_set)  # fmt: skip
            fields = handler(ctx, run) or {}
    except LeaseLost as exc:
        log.warning("%s %s: %s stage stopped: %s", kind, job_id, stage_name, exc)
        return "lease lost"
    except Canceled:
        _outcome(ctx, "cancel", lambda s: lifecycle.acknowledge_cancel(s, kind, job_id))
        return "canceled"
    except HandBack:
        why = "its worker was shut down: queued again"
        nxt = _outcome(ctx, "hand back", lambda s: lifecycle.hand_back(
            s, kind, job_id, stage_id, lease, why=why, count_attempt=False))  # fmt: skip
        send_all(ctx, [nxt] if nxt else [])
        return "handed back"
    except Exception as exc:
        return _failed(ctx, kind, job_id, stage_name, stage_id, lease, exc)
    nxt = _outcome(ctx, "finish", lambda s: lifecycle.finish_stage(
        s, kind, job_id, lifecycle.owned_stage(s, stage_id, lease), lease=lease, **fields))  # fmt: skip
    send_all(ctx, nxt or [])  # after the commit: a worker that picks them up sees this stage finished
    return "done"


def _cache_entries(kind: str, job) -> list[tuple[str, str]]:
    """The worker-cache entries a stage uses (held while it runs: never evicted under it)."""
    if kind == "subject":
        return [("subjects", job.id)]
    return [("renders", job.id), ("subjects", job.subject_id)]


def housekeep(ctx) -> None:
    """Between stages: loaded subjects that were deleted are closed, their cached files and those of
    deleted or finished jobs removed, and the cache trimmed to its size (at most once a minute)."""
    try:
        gone = _deleted_subjects(ctx, ctx.loaded())
        for subject_id in gone:
            ctx.forget(subject_id)
        ctx.cache.housekeep(ctx.engine, force=bool(gone))
    except Exception as exc:  # noqa: BLE001 -- housekeeping never fails a task
        log.warning("worker cache housekeeping failed: %s", describe(exc))


def _deleted_subjects(ctx, subject_ids: list[str]) -> list[str]:
    if not subject_ids:
        return []
    from sqlalchemy import select

    from shared.db.models import Subject

    with session_scope(ctx.engine) as s:
        found = set(s.scalars(select(Subject.id).where(Subject.id.in_(subject_ids))))
    return [i for i in subject_ids if i not in found]


def _failed(ctx, kind: str, job_id: str, stage_name: str, stage_id: int, lease: str, exc: Exception) -> str:
    """A stage that raised: handed back after an outage, else its job fails with a code."""
    from celery.exceptions import SoftTimeLimitExceeded

    if is_transient(exc):
        why = f"{lifecycle.UNAVAILABLE_MARK} {describe(exc)}; it will be tried again"
        log.warning("%s %s: the %s stage hit an outage (%s): handed back", kind, job_id, stage_name, exc)
        _outcome(ctx, "hand back", lambda s: lifecycle.hand_back(
            s, kind, job_id, stage_id, lease, why=why, delay_s=UNAVAILABLE_DELAY_S))  # fmt: skip
        return "handed back: unavailable"
    if isinstance(exc, SyncTalkError):  # bad input or an unusable file: told to the user, never retried
        code, message = exc.code, str(exc)
    elif isinstance(exc, SoftTimeLimitExceeded):
        code, message = "stage_timeout", f"the {stage_name} stage ran past its time limit"
    else:
        log.exception("%s %s: the %s stage crashed", kind, job_id, stage_name, exc_info=exc)
        code, message = "internal_error", f"the {stage_name} stage failed unexpectedly ({type(exc).__name__})"
    span = trace.get_current_span()  # the stage's (gpu_worker/tasks/spans.py)
    span.record_exception(exc)
    span.set_attribute("synctalk.error_code", code)
    _outcome(ctx, "fail", lambda s: lifecycle.fail(
        s, kind, job_id, code, message, stage_id=stage_id, lease=lease))  # fmt: skip
    return f"failed: {code}"


def _outcome(ctx, what: str, fn: Callable[[Session], object]):
    """Record a stage's outcome, retried through an outage; None (logged) when its lease was lost or the
    database stayed away: the reaper then queues the stage again."""
    try:
        return _db(ctx, what, fn)
    except LeaseLost as exc:
        log.warning("outcome not recorded (%s): %s", what, exc)
    except Exception as exc:  # noqa: BLE001
        if not is_transient(exc):
            raise
        log.error("outcome not recorded (%s): the database stayed unreachable (%s)", what, describe(exc))
    return None


def send_all(ctx, nxt: list[Next]) -> None:
    """Send the stages a committed outcome made due (the scheduler sends whatever the broker refuses)."""
    dispatch.send(ctx.celery, sessionmaker(ctx.engine, expire_on_commit=False), nxt)
