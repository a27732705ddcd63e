"""The life of a job in the database: created with its stages, claimed stage by stage by workers,
advanced, failed, canceled. Job state lives here, never only in Celery.

Every function works inside the caller's session and returns the stages to queue (``Next``) once that
session has committed: a task is never sent for a row another process cannot see yet. Every change
appends one event (``Event``): the SSE stream and the webhooks read them. A finished job never moves
again, whatever a redelivered task asks (``TRANSITIONS``).

Delivery: a stage due to run carries ``ready_at`` (the outbox); whoever committed it sends its task and
marks ``sent_at`` (shared/jobs/dispatch.py); the scheduler sends what was never sent and what the broker
lost. A claim takes a new ``lease``: the owner's progress, finish, failure and hand-back are written only
while the stage still holds it, so an owner the reaper gave up on finds out at its next write and stops.
Attempts are bounded: a stage claimed ``max_attempts`` times without finishing fails its job.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from shared.db.models import Event, Render, Stage, Subject, new_id, utcnow
from shared.db.states import JobKind, JobState, can_transition
from shared.jobs import webhooks
from shared.jobs.views import render_view, subject_view
from shared.queue.stages import job_progress, next_stage, stages_of
from shared.telemetry import current_traceparent

MODELS: dict[JobKind, type[Subject] | type[Render]] = {JobKind.subject: Subject, JobKind.render: Render}


@dataclass(frozen=True)
class Next:
    """A stage to send to its queue once the transaction has committed."""

    kind: str
    job_id: str
    stage: str
    # the W3C traceparent stored on the stage row: what its task carries when no span of the same job is
    # current (the scheduler's sends; a subject's worker making its waiting renders due)
    trace_context: str | None = None


def _aware(t: datetime | None) -> datetime | None:
    return t if t is None or t.tzinfo else t.replace(tzinfo=UTC)


def job_row(session: Session, kind: JobKind | str, job_id: str, *, lock: bool = False):
    stmt = select(MODELS[JobKind(kind)]).where(MODELS[JobKind(kind)].id == job_id)
    return session.scalars(stmt.with_for_update() if lock else stmt).first()


def stages_of_job(session: Session, job_id: str) -> list[Stage]:
    return list(session.scalars(select(Stage).where(Stage.job_id == job_id).order_by(Stage.position)))


def view(session: Session, kind: JobKind | str, row, base_url: str | None = None) -> dict:
    """The resource's JSON (API.md); ``base_url`` (default: the settings' public URL) makes links absolute."""
    stages = stages_of_job(session, row.id)
    if JobKind(kind) is JobKind.subject:
        return subject_view(row, stages)
    return render_view(row, stages, _public_url() if base_url is None else base_url)


def views(session: Session, kind: JobKind | str, rows: list, base_url: str | None = None) -> list[dict]:
    """``view`` of many rows (a page of a list) with one query for all their stages, not one each."""
    stages: dict[str, list[Stage]] = {row.id: [] for row in rows}
    ids = list(stages)
    for i in range(0, len(ids), 500):
        chunk = select(Stage).where(Stage.job_id.in_(ids[i : i + 500])).order_by(Stage.job_id, Stage.position)
        for stage in session.scalars(chunk):
            stages[stage.job_id].append(stage)
    if JobKind(kind) is JobKind.subject:
        return [subject_view(row, stages[row.id]) for row in rows]
    base = _public_url() if base_url is None else base_url
    return [render_view(row, stages[row.id], base) for row in rows]


def emit(
    session: Session, kind: JobKind | str, row, *, status_changed: bool, stages: list[Stage] | None = None,
    hooks: list[tuple[str, list[str]]] | None = None,
) -> Event:  # fmt: skip
    """Append the job's current document to the event log: ``subject.succeeded`` style when its status
    changed (what webhooks subscribe to), ``subject.progress`` otherwise. ``stages`` (the job's, when
    the caller holds them) and ``hooks`` (``webhooks.subscriptions``) spare a query each: creating many
    jobs in one transaction then costs no round trip per job."""
    kind = JobKind(kind)
    if stages is None:
        session.flush()
        stages = stages_of_job(session, row.id)
    data = subject_view(row, stages) if kind is JobKind.subject else render_view(row, stages, _public_url())
    event = Event(
        tenant_id=row.tenant_id,
        type=f"{kind.value}.{row.status if status_changed else 'progress'}",
        resource=kind.value,
        resource_id=row.id,
        data=data,
    )
    session.add(event)
    webhooks.fan_out(session, event, hooks=hooks)  # the deliveries are in the same transaction as the change
    return event


def _public_url() -> str:
    from shared.settings import get_settings

    return get_settings().public_url


def _set_status(row, new: JobState) -> None:
    old = JobState(row.status)
    if old != new:
        if not can_transition(old, new):
            raise ValueError(f"a {old} job cannot become {new}")
        row.status = new.value
    now = utcnow()
    if new is JobState.running and row.started_at is None:
        row.started_at = now
    if new.is_final:
        row.finished_at = now
        row.eta_s = None
    row.updated_at = now


def add_stages(session: Session, kind: JobKind | str, row, *, ready: bool) -> list[Stage]:
    """The job's stages, queued, with every field set here (no flush needed to show them); the first is
    due at once when ``ready`` (a render waits for its subject otherwise)."""
    kind = JobKind(kind)
    now = utcnow()
    trace_context = current_traceparent()  # the request creating the job: every stage continues its trace
    stages = [
        Stage(
            tenant_id=row.tenant_id,
            job_id=row.id,
            position=i,
            name=spec.name,
            queue=spec.queue,
            status=JobState.queued.value,
            progress=0.0,
            attempts=0,
            subject_id=row.id if kind is JobKind.subject else None,
            render_id=row.id if kind is JobKind.render else None,
            ready_at=now if ready and i == 0 else None,
            trace_context=trace_context,
        )  # fmt: skip
        for i, spec in enumerate(stages_of(kind))
    ]
    session.add_all(stages)
    return stages


def _new_job_fields() -> dict:
    """What the database would fill in on insert, set now: the new row can be shown (its event's
    document) before anything is flushed, and many rows go in one batched INSERT at commit."""
    now = utcnow()
    return {
        "id": new_id(),
        "status": JobState.queued.value,
        "progress": 0.0,
        "created_at": now,
        "updated_at": now,
    }


def create_subject(session: Session, tenant_id: str, **fields) -> tuple[Subject, list[Next]]:
    """A new subject (``name``, ``profile``, ``upload_id``, ``source_key``) with its stages, queued."""
    subject = Subject(tenant_id=tenant_id, **_new_job_fields(), **fields)
    session.add(subject)
    stages = add_stages(session, JobKind.subject, subject, ready=True)
    emit(session, JobKind.subject, subject, status_changed=True, stages=stages)
    return subject, [Next(JobKind.subject.value, subject.id, stages_of(JobKind.subject)[0].name)]


def create_render(
    session: Session, tenant_id: str, subject: Subject, *, hooks: list[tuple[str, list[str]]] | None = None,
    **fields,
) -> tuple[Render, list[Next]]:  # fmt: skip
    """A new render of ``subject`` (``mode``, ``start_frame``, ``audio_key``, ``upload_id``, ``ref``,
    ``batch_id``). It starts at once when the subject is ready, waits (queued) while it trains, and
    fails with the subject's error when the subject failed. No query is made (``hooks``: the tenant's
    ``webhooks.subscriptions``, when creating many): a batch's renders are inserted together at commit."""
    render = Render(tenant_id=tenant_id, subject_id=subject.id, **{"mode": "fullframe", "start_frame": 0,
                    **_new_job_fields(), **fields})  # fmt: skip
    session.add(render)
    stages = add_stages(session, JobKind.render, render, ready=subject.status == JobState.succeeded)
    nxt: list[Next] = []
    if subject.status == JobState.succeeded:
        nxt.append(Next(JobKind.render.value, render.id, stages_of(JobKind.render)[0].name))
    elif JobState(subject.status) in (JobState.failed, JobState.canceled):
        _fail_row(render, subject.error_code or "subject_failed", _subject_failure(subject))
    emit(session, JobKind.render, render, status_changed=True, stages=stages, hooks=hooks)
    return render, nxt


def _subject_failure(subject: Subject) -> str:
    if subject.status == JobState.canceled:
        return f"the subject {subject.name!r} was canceled before it was ready"
    return f"the subject {subject.name!r} failed: {subject.error_message or subject.error_code}"


class LeaseLost(Exception):
    """The stage is no longer this owner's (the reaper gave it to another, or the job ended): stop."""


def _give_up_message(stage: Stage) -> tuple[str, str]:
    """(code, sentence) for a stage that ran out of attempts, after why its last run did not finish."""
    why = stage.message or ""
    if why.startswith(UNAVAILABLE_MARK):
        return "service_unavailable", (
            f"The {stage.name} stage could not reach a service it needs on {stage.attempts} attempts "
            f"({why.removeprefix(UNAVAILABLE_MARK).strip()}); it was given up. Retry once the platform is healthy."
        )
    return "worker_lost", (
        f"The {stage.name} stage was started {stage.attempts} times and its worker stopped each time before "
        "finishing (killed, out of memory, or its machine was lost); it was given up so that it stops taking "
        "workers down. Retry it, or try a shorter input."
    )


UNAVAILABLE_MARK = "unavailable:"  # a stage message that says the last run was handed back for an outage


def claim(
    session: Session, kind: JobKind | str, job_id: str, stage_name: str, *, task_id: str, worker: str,
    stale_after_s: float, max_attempts: int | None = None,
) -> Stage | None:  # fmt: skip
    """Take a stage to run, with a new lease (``stage.lease``): None when there is nothing to do (the
    job is finished or gone, the stage done or not due yet, or another live worker holds it): a
    redelivered or duplicated task then simply ends. A stage already claimed ``max_attempts`` times
    fails its job instead of running again (a render that kills its worker must not kill them all)."""
    kind = JobKind(kind)
    row = job_row(session, kind, job_id, lock=True)
    if row is None or JobState(row.status).is_final:
        return None
    stage = session.scalars(
        select(Stage).where(Stage.job_id == job_id, Stage.name == stage_name).with_for_update()
    ).first()
    if stage is None or stage.status not in (JobState.queued, JobState.running):
        return None
    now = utcnow()
    if stage.status == JobState.queued and (stage.ready_at is None or _aware(stage.ready_at) > now):
        return None  # not due: an earlier stage or its subject is unfinished, or it waits out a backoff
    beat = _aware(stage.heartbeat_at)
    if (
        stage.status == JobState.running
        and stage.task_id != task_id
        and beat
        and now - beat < timedelta(seconds=stale_after_s)
    ):
        return None  # a live worker has it
    if row.cancel_requested_at is not None:
        _cancel_row(session, kind, row)
        return None
    if max_attempts is not None and stage.attempts >= max_attempts:
        code, message = _give_up_message(stage)
        fail(session, kind, job_id, code, message)
        return None
    stage.status, stage.task_id, stage.worker = JobState.running.value, task_id, worker
    stage.lease = uuid.uuid4().hex
    stage.attempts += 1
    stage.heartbeat_at = now
    stage.started_at = stage.started_at or now
    was_running = row.status == JobState.running
    _set_status(row, JobState.running)
    row.stage = stage_name
    row.progress = job_progress(kind, stage_name, stage.progress)
    emit(session, kind, row, status_changed=not was_running)  # the next stage is progress, not news
    return stage


def owned_stage(session: Session, stage_id: int, lease: str | None, *, lock: bool = False) -> Stage:
    """The stage row, while ``lease`` still owns it (running under that token); LeaseLost otherwise.
    ``lease`` None: no check (tools and tests that drive stages by hand)."""
    stmt = select(Stage).where(Stage.id == stage_id)
    stage = session.scalars(stmt.with_for_update() if lock else stmt).first()
    if stage is None:
        raise LeaseLost("the stage is gone (its job was deleted)")
    if lease is not None and (stage.lease != lease or stage.status != JobState.running):
        raise LeaseLost(f"the {stage.name} stage is no longer this worker's ({stage.status})")
    return stage


def heartbeat(session: Session, stage_id: int, lease: str) -> bool:
    """Only the running owner's heartbeat (no event: nothing a person sees changed). False when the
    lease is no longer held."""
    done = session.execute(
        update(Stage)
        .where(Stage.id == stage_id, Stage.lease == lease, Stage.status == JobState.running.value)
        .values(heartbeat_at=utcnow())
    )
    return done.rowcount == 1


def progress(
    session: Session, kind: JobKind | str, job_id: str, stage: Stage, fraction: float, message: str,
    eta_s: float | None = None, *, lease: str | None = None,
) -> bool:  # fmt: skip
    """Record a running stage's progress and heartbeat; False when the job was canceled (stop now);
    LeaseLost when ``lease`` no longer owns the stage."""
    kind = JobKind(kind)
    if lease is not None:
        stage = owned_stage(session, stage.id, lease)
    row = job_row(session, kind, job_id)
    if row is None or row.cancel_requested_at is not None or JobState(row.status).is_final:
        return False
    stage.progress = min(max(fraction, 0.0), 1.0)
    stage.message = message[:1000]
    stage.heartbeat_at = utcnow()
    row.progress = job_progress(kind, stage.name, stage.progress)
    row.message = stage.message
    row.eta_s = eta_s
    row.updated_at = stage.heartbeat_at
    emit(session, kind, row, status_changed=False)
    return True


def finish_stage(
    session: Session, kind: JobKind | str, job_id: str, stage: Stage, *, lease: str | None = None, **fields
) -> list[Next]:
    """A stage succeeded: record its results on the job (``fields``), then make the next stage due, or
    finish the job (a subject that becomes ready makes its waiting renders due). LeaseLost when
    ``lease`` no longer owns the stage: its results are not recorded."""
    kind = JobKind(kind)
    row = job_row(session, kind, job_id, lock=True)
    if lease is not None:
        stage = owned_stage(session, stage.id, lease, lock=True)
    if row is None or JobState(row.status).is_final:
        return []
    for name, value in fields.items():
        setattr(row, name, value)
    now = utcnow()
    stage.status, stage.progress, stage.finished_at, stage.heartbeat_at = (
        JobState.succeeded.value,
        1.0,
        now,
        now,
    )
    stage.lease = None
    following = next_stage(kind, stage.name)
    if following is not None:
        row.progress = job_progress(kind, stage.name, 1.0)
        row.updated_at = now
        emit(session, kind, row, status_changed=False)
        traced = _make_due(session, job_id, following.name, now)
        return [Next(kind.value, job_id, following.name, traced or stage.trace_context)]
    row.progress, row.message = 1.0, None
    _set_status(row, JobState.succeeded)
    emit(session, kind, row, status_changed=True)
    if kind is not JobKind.subject:
        return []
    first = stages_of(JobKind.render)[0].name
    waiting_stages = session.execute(  # with each render's trace (the request that created it)
        select(Render.id, Stage.trace_context)
        .join(Stage, (Stage.render_id == Render.id) & (Stage.name == first))
        .where(Render.subject_id == job_id, Render.status == JobState.queued)
    ).all()
    waiting = [render_id for render_id, _ in waiting_stages]
    for chunk in (waiting[i : i + 500] for i in range(0, len(waiting), 500)):
        session.execute(
            update(Stage)
            .where(Stage.job_id.in_(chunk), Stage.name == first, Stage.status == JobState.queued.value)
            .values(ready_at=now, sent_at=None)
        )
    return [Next(JobKind.render.value, render_id, first, traced) for render_id, traced in waiting_stages]


def _make_due(session: Session, job_id: str, stage_name: str, now: datetime) -> str | None:
    """The job's next stage becomes due; it stores the current span's trace context (the stage that
    finished) so that a later send of it by the scheduler joins the trace there. Returns that context."""
    traced = current_traceparent()
    values: dict = {"ready_at": now, "sent_at": None}
    if traced is not None:
        values["trace_context"] = traced
    session.execute(
        update(Stage)
        .where(Stage.job_id == job_id, Stage.name == stage_name, Stage.status == JobState.queued.value)
        .values(**values)
    )
    return traced


def hand_back(
    session: Session, kind: JobKind | str, job_id: str, stage_id: int, lease: str, *, why: str,
    delay_s: float = 0.0, count_attempt: bool = True,
) -> Next | None:  # fmt: skip
    """The owner gives its running stage back to the queue (its worker is shutting down, or a service
    it needs stayed unreachable): queued again, due after ``delay_s``, to be sent anew. A shutdown does
    not count as an attempt (``count_attempt``); an outage does, so endless ones end. None when the lease
    was already lost (nothing to hand back)."""
    kind = JobKind(kind)
    row = job_row(session, kind, job_id, lock=True)
    try:
        stage = owned_stage(session, stage_id, lease, lock=True)
    except LeaseLost:
        return None
    if row is None or JobState(row.status).is_final:
        return None
    _requeue(stage, why, delay_s)
    if not count_attempt:
        stage.attempts = max(0, stage.attempts - 1)
    row.message = stage.message
    row.updated_at = utcnow()
    emit(session, kind, row, status_changed=False)
    return Next(kind.value, job_id, stage.name, stage.trace_context)


def _requeue(stage: Stage, why: str, delay_s: float = 0.0) -> None:
    now = utcnow()
    stage.status, stage.task_id, stage.lease = JobState.queued.value, None, None
    stage.ready_at = now + timedelta(seconds=max(0.0, delay_s))
    stage.sent_at = None
    stage.message = why[:1000]


def _fail_row(row, code: str, message: str) -> None:
    row.error_code, row.error_message = code, message
    _set_status(row, JobState.failed)


def fail(
    session: Session, kind: JobKind | str, job_id: str, code: str, message: str, *,
    stage_id: int | None = None, lease: str | None = None,
) -> None:  # fmt: skip
    """The job failed (its running stage with it); a subject's waiting renders fail with its error.
    With ``lease``, only while that owner still holds ``stage_id`` (else LeaseLost: a stale owner's
    error is not the job's)."""
    kind = JobKind(kind)
    row = job_row(session, kind, job_id, lock=True)
    if lease is not None and stage_id is not None:
        owned_stage(session, stage_id, lease, lock=True)
    if row is None or JobState(row.status).is_final:
        return
    for stage in stages_of_job(session, job_id):
        if stage.status in (JobState.running, JobState.queued) and (
            stage.status == JobState.running or stage.ready_at is not None
        ):
            stage.status, stage.finished_at = JobState.failed.value, utcnow()
        stage.lease = None
    _fail_row(row, code, message)
    emit(session, kind, row, status_changed=True)
    if kind is JobKind.subject:
        _fail_waiting_renders(session, row)


def _fail_waiting_renders(session: Session, subject: Subject) -> None:
    for render in session.scalars(
        select(Render).where(Render.subject_id == subject.id, Render.status == JobState.queued)
    ):
        _fail_row(render, subject.error_code or "subject_failed", _subject_failure(subject))
        emit(session, JobKind.render, render, status_changed=True)


def request_cancel(session: Session, kind: JobKind | str, job_id: str) -> bool:
    """Cancel a job: a queued one at once, a running one at its stage's next progress report (the
    worker stops there). False when the job had already finished."""
    kind = JobKind(kind)
    row = job_row(session, kind, job_id, lock=True)
    if row is None or JobState(row.status).is_final:
        return False
    row.cancel_requested_at = utcnow()
    if row.status == JobState.queued:
        _cancel_row(session, kind, row)
    return True


def _cancel_row(session: Session, kind: JobKind, row) -> None:
    for stage in stages_of_job(session, row.id):
        if stage.status in (JobState.queued, JobState.running):
            stage.status = JobState.canceled.value
            stage.finished_at = utcnow() if stage.started_at else None
            stage.lease = None
    _set_status(row, JobState.canceled)
    emit(session, kind, row, status_changed=True)
    if kind is JobKind.subject:
        _fail_waiting_renders(session, row)


def acknowledge_cancel(session: Session, kind: JobKind | str, job_id: str) -> None:
    """The worker stopped a stage because the job was canceled: record it."""
    kind = JobKind(kind)
    row = job_row(session, kind, job_id, lock=True)
    if row is not None and not JobState(row.status).is_final:
        _cancel_row(session, kind, row)


def reap(session: Session, *, stale_after_s: float, max_attempts: int) -> list[Next]:
    """Stages whose worker stopped heartbeating: queued again (due at once, to be sent anew) while they
    have attempts left, else their job fails with ``worker_lost``. Returns what to send after commit."""
    cutoff = utcnow() - timedelta(seconds=stale_after_s)
    nxt: list[Next] = []
    stale = select(Stage).where(
        Stage.status == JobState.running.value, or_(Stage.heartbeat_at.is_(None), Stage.heartbeat_at < cutoff)
    )
    for stage in session.scalars(stale.with_for_update(skip_locked=True)):
        kind = JobKind.subject if stage.subject_id else JobKind.render
        if stage.attempts >= max_attempts:
            code, message = _give_up_message(stage)
            fail(session, kind, stage.job_id, code, message)
            continue
        _requeue(stage, "its worker stopped responding: queued again")
        nxt.append(Next(kind.value, stage.job_id, stage.name, stage.trace_context))
    return nxt
