"""Delivery that survives the broker: the database decides what runs, the broker only carries it.

A stage due to run is committed with ``ready_at`` set and ``sent_at`` empty (the outbox, in the very
transaction that made it due: a job created, a stage finished, a stage requeued). Then:

- whoever committed it sends its task at once and marks ``sent_at`` (``send``). A send that fails (the
  broker down, the process killed between commit and send) leaves ``sent_at`` empty;
- the scheduler sends every due stage still unsent after a few seconds (``dispatch``, part 1);
- and sends again a stage the broker lost (``dispatch``, part 2): one whose task was sent more than
  ``job_resend_after_s`` ago and that no worker claimed, when nothing can still be waiting before it in
  its queue. The broker's queues are first in, first out, so that is when the queue is empty, or when
  a stage sent *later* into the same queue was already claimed. A Redis restarted empty, a message taken
  by a worker killed before it claimed it, a send whose answer was lost: all end there.

A task delivered twice is harmless: its claim finds the stage taken by a live owner, or done.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from shared.db.models import Stage, utcnow
from shared.db.states import JobKind, JobState
from shared.jobs.lifecycle import Next
from shared.queue.app import queue_depths, send_stages
from shared.queue.stages import QUEUES

log = logging.getLogger(__name__)
SEND_GRACE_S = 3.0  # an unsent stage younger than this is left to the process that committed it
BATCH = 500  # stages sent per query and per publish batch


def _kind(stage_subject_id: str | None) -> str:
    return JobKind.subject.value if stage_subject_id else JobKind.render.value


def mark_sent(session: Session, sent: Iterable[Next], now: datetime | None = None) -> None:
    """Record that these stages' tasks are in the broker (only while they are still queued)."""
    now = now or utcnow()
    by_stage: dict[str, list[str]] = {}
    for n in sent:
        by_stage.setdefault(n.stage, []).append(n.job_id)
    for name, job_ids in by_stage.items():
        for i in range(0, len(job_ids), BATCH):
            session.execute(
                update(Stage)
                .where(
                    Stage.job_id.in_(job_ids[i : i + BATCH]),
                    Stage.name == name,
                    Stage.status == JobState.queued.value,
                )
                .values(sent_at=now)
            )


def send(celery, sessions: Callable[[], Session], nxt: list[Next]) -> bool:
    """Send the tasks of stages a committed transaction made due, and mark them sent. Never raises: what
    the broker refused stays unsent and the scheduler sends it. True when all went."""
    if not nxt:
        return True
    try:
        send_stages(celery, ((n.kind, n.job_id, n.stage, n.trace_context) for n in nxt))
    except Exception as exc:  # noqa: BLE001 -- the broker may be down: the outbox keeps the work
        log.warning("could not send %d task(s) (%s); the scheduler will send them", len(nxt), exc)
        return False
    try:
        with sessions() as s:
            mark_sent(s, nxt)
            s.commit()
    except Exception as exc:  # noqa: BLE001 -- unmarked, they are sent once more: harmless
        log.warning("sent %d task(s) but could not mark them sent (%s)", len(nxt), exc)
    return True


@dataclass
class DispatchReport:
    sent: int = 0  # due stages never sent, sent now
    resent: int = 0  # stages whose message the broker lost, sent again
    failed: bool = False  # the broker refused a send (retried next pass)


def _send_rows(celery, session: Session, rows: list, now: datetime) -> int:
    """Send the stages of ``rows`` (id, job id, name, subject id, trace context): each message carries
    the trace stored on its row, so a stage sent by the scheduler still joins its job's trace."""
    nxt = [Next(_kind(subject_id), job_id, name, traced) for _id, job_id, name, subject_id, traced in rows]
    send_stages(celery, ((n.kind, n.job_id, n.stage, n.trace_context) for n in nxt))
    mark_sent(session, nxt, now)
    session.commit()
    return len(nxt)


def _unsent(session: Session, now: datetime) -> list:
    return session.execute(
        select(Stage.id, Stage.job_id, Stage.name, Stage.subject_id, Stage.trace_context)
        .where(
            Stage.status == JobState.queued.value,
            Stage.ready_at <= now - timedelta(seconds=SEND_GRACE_S),
            Stage.sent_at.is_(None),
        )
        .order_by(Stage.ready_at)
        .limit(BATCH)
    ).all()


def _lost(session: Session, queue: str, depth: int, now: datetime, resend_after_s: float) -> list:
    """Queued stages of ``queue`` whose message is gone from the broker (see the module docstring)."""
    old = now - timedelta(seconds=resend_after_s)
    waiting = (
        select(Stage.id, Stage.job_id, Stage.name, Stage.subject_id, Stage.trace_context, Stage.sent_at)
        .where(
            Stage.queue == queue,
            Stage.status == JobState.queued.value,
            Stage.ready_at <= now,
            Stage.sent_at < old,
        )
        .order_by(Stage.sent_at)
        .limit(BATCH)
    )
    rows = session.execute(waiting).all()
    if not rows:
        return []
    if depth > 0:
        # the newest send of this queue that a worker has taken since the oldest unclaimed one was sent
        taken = session.scalar(
            select(func.max(Stage.sent_at)).where(
                Stage.queue == queue,
                Stage.sent_at > rows[0].sent_at,
                Stage.status.in_((JobState.running.value, JobState.succeeded.value, JobState.failed.value)),
            )
        )
        if taken is None:
            return []  # its messages may all still wait in the queue
        cutoff = _aware(taken) - timedelta(seconds=resend_after_s)
        rows = [r for r in rows if _aware(r.sent_at) < cutoff]
    return [(r.id, r.job_id, r.name, r.subject_id, r.trace_context) for r in rows]


def dispatch(celery, sessions: Callable[[], Session], *, resend_after_s: float, now: datetime | None = None,
             depths: dict[str, int] | None = None) -> DispatchReport:  # fmt: skip
    """One pass of the scheduler's dispatcher: due stages never sent are sent; lost ones sent again.
    ``depths``: the broker's message count per queue (read from the broker when None; a queue whose
    depth cannot be read is not checked for losses this pass)."""
    now = now or utcnow()
    report = DispatchReport()
    with sessions() as s:
        try:
            while rows := _unsent(s, now):
                report.sent += _send_rows(celery, s, rows, now)
                if len(rows) < BATCH:
                    break
        except Exception as exc:  # noqa: BLE001 -- the broker is down: next pass
            s.rollback()
            log.warning("dispatch: the broker refused the due tasks (%s)", exc)
            report.failed = True
            return report
        if depths is None:
            depths = queue_depths(celery)
        for queue in QUEUES:
            if queue not in depths:
                continue
            lost = _lost(s, queue, depths[queue], now, resend_after_s)
            if not lost:
                continue
            try:
                report.resent += _send_rows(celery, s, lost, now)
            except Exception as exc:  # noqa: BLE001
                s.rollback()
                log.warning("dispatch: could not send lost tasks again (%s)", exc)
                report.failed = True
                return report
            log.warning("dispatch: %d %s task(s) were lost by the broker; sent again", len(lost), queue)
    return report


def _aware(t: datetime) -> datetime:
    from datetime import UTC

    return t if t.tzinfo else t.replace(tzinfo=UTC)
