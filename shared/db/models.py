"""Tables of the v1 contract (../shared/design/API.md): tenants and their hashed keys, uploads, subjects,
renders, batches, the stages of each job, the event log, webhooks and their deliveries, idempotency keys.

Every row that belongs to a tenant carries ``tenant_id``; queries go through ``tenant_scoped`` so a
tenant can never read another's rows. Subjects and renders are the job-like resources: each carries its
job state (``JobColumns``) and an ordered list of ``Stage`` rows, which is also where a running stage's
worker heartbeats. Migrations in migrations/ are generated from this metadata.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from shared.db.states import JobState

# Stable constraint names, so Alembic migrations are the same on SQLite and Postgres.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
Id = String(32)
When = DateTime(timezone=True)
BigId = BigInteger().with_variant(Integer, "sqlite")  # SQLite autoincrements INTEGER PRIMARY KEY only


def new_id() -> str:
    return uuid.uuid4().hex


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


def _tenant() -> Mapped[str]:
    return mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(Id, primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(When, default=utcnow)


class ApiKey(Base):
    """Only a keyed hash of the key is stored; ``prefix`` (public, shown in listings) finds the row."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(Id, primary_key=True, default=new_id)
    tenant_id: Mapped[str] = _tenant()
    prefix: Mapped[str] = mapped_column(String(16), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(When, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(When, nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(When, nullable=True)


class Upload(Base):
    """A file a client sends (a subject video, a speech track): presigned or direct, probed before use."""

    __tablename__ = "uploads"

    id: Mapped[str] = mapped_column(Id, primary_key=True, default=new_id)
    tenant_id: Mapped[str] = _tenant()
    filename: Mapped[str] = mapped_column(String(255))
    content_type: Mapped[str] = mapped_column(String(100))
    bytes: Mapped[int] = mapped_column(BigInteger)
    storage_key: Mapped[str] = mapped_column(String(512), index=True)  # deletion finds a bundle's parts
    # where the file starts in ``storage_key`` when it is a part of a shared object (files sent inline
    # are stored one object per call), ``bytes`` long; None: the upload is the whole object
    part_offset: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending | received | refused
    probe: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)  # the media layer's description
    created_at: Mapped[datetime] = mapped_column(When, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(When, index=True)  # retention prunes expired ones


class JobColumns:
    """The job state a subject or a render carries (API.md "Job-like resources")."""

    status: Mapped[str] = mapped_column(String(16), default=JobState.queued.value)
    stage: Mapped[str | None] = mapped_column(String(32), nullable=True)  # the current (or last) stage
    progress: Mapped[float] = mapped_column(Float, default=0.0)  # 0..1 over the whole job
    message: Mapped[str | None] = mapped_column(Text, nullable=True)  # the latest progress line
    eta_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    error_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    cancel_requested_at: Mapped[datetime | None] = mapped_column(When, nullable=True)
    created_at: Mapped[datetime] = mapped_column(When, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(When, default=utcnow, onupdate=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(When, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(When, nullable=True)


class Subject(JobColumns, Base):
    """A person the platform learns; its source video, dataset and model live in storage under these keys."""

    __tablename__ = "subjects"
    __table_args__ = (Index("ix_subjects_tenant_created", "tenant_id", "created_at"),)

    id: Mapped[str] = mapped_column(Id, primary_key=True, default=new_id)
    tenant_id: Mapped[str] = _tenant()
    name: Mapped[str] = mapped_column(String(200))
    profile: Mapped[str] = mapped_column(String(16))
    upload_id: Mapped[str | None] = mapped_column(
        ForeignKey("uploads.id", ondelete="SET NULL"), nullable=True, index=True
    )
    source_key: Mapped[str | None] = mapped_column(String(512), nullable=True)
    dataset_key: Mapped[str | None] = mapped_column(String(512), nullable=True)
    model_key: Mapped[str | None] = mapped_column(String(512), nullable=True)
    report: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)  # dataset quality report
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)  # evaluation


class Batch(Base):
    """Many renders of one subject created in one call; its counts come from its renders."""

    __tablename__ = "batches"

    id: Mapped[str] = mapped_column(Id, primary_key=True, default=new_id)
    tenant_id: Mapped[str] = _tenant()
    subject_id: Mapped[str] = mapped_column(ForeignKey("subjects.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(When, default=utcnow)


class Render(JobColumns, Base):
    """One speech track on one subject: a finished video and its quality checks."""

    __tablename__ = "renders"
    __table_args__ = (
        Index("ix_renders_tenant_created", "tenant_id", "created_at"),
        Index("ix_renders_subject_status", "subject_id", "status"),
    )

    id: Mapped[str] = mapped_column(Id, primary_key=True, default=new_id)
    tenant_id: Mapped[str] = _tenant()
    subject_id: Mapped[str] = mapped_column(ForeignKey("subjects.id", ondelete="CASCADE"))
    batch_id: Mapped[str | None] = mapped_column(
        ForeignKey("batches.id", ondelete="SET NULL"), nullable=True, index=True
    )
    batch: Mapped[Batch | None] = relationship(foreign_keys=[batch_id], lazy="raise")  # insert order only
    ref: Mapped[str | None] = mapped_column(String(500), nullable=True)  # the client's own name (batches)
    mode: Mapped[str] = mapped_column(String(16), default="fullframe")
    start_frame: Mapped[int] = mapped_column(Integer, default=0)
    upload_id: Mapped[str | None] = mapped_column(
        ForeignKey("uploads.id", ondelete="SET NULL"), nullable=True, index=True
    )
    audio_key: Mapped[str | None] = mapped_column(String(512), nullable=True)
    video_key: Mapped[str | None] = mapped_column(String(512), nullable=True)
    duration_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    qc: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # captions (0006): what was asked (a Whisper language code or None: detect; on | off | burn), then
    # what the render made (the WebVTT file's key, the SRT beside it; the captions' language)
    language: Mapped[str | None] = mapped_column(String(8), nullable=True)
    captions: Mapped[str] = mapped_column(String(8), default="on", server_default="on")
    captions_key: Mapped[str | None] = mapped_column(String(512), nullable=True)
    captions_language: Mapped[str | None] = mapped_column(String(8), nullable=True)


class Stage(Base):
    """One stage of a subject's or a render's job, in order. A running stage's worker heartbeats here; a
    reaper requeues or fails stages whose heartbeat stopped."""

    __tablename__ = "stages"
    __table_args__ = (
        UniqueConstraint("job_id", "name", name="uq_stages_job_name"),
        Index("ix_stages_status_heartbeat", "status", "heartbeat_at"),
        Index("ix_stages_status_ready", "status", "ready_at"),
        Index("ix_stages_queue_sent", "queue", "sent_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = _tenant()
    # the job it belongs to: the subject's or the render's id (ids are unique across both); the two
    # foreign keys beside it delete a job's stages with it
    job_id: Mapped[str] = mapped_column(Id)
    subject_id: Mapped[str | None] = mapped_column(
        ForeignKey("subjects.id", ondelete="CASCADE"), nullable=True, index=True
    )
    render_id: Mapped[str | None] = mapped_column(
        ForeignKey("renders.id", ondelete="CASCADE"), nullable=True, index=True
    )
    # never loaded ("raise"): they tell the unit of work to insert a new job before its stages, so a
    # batch of jobs goes in with one flush (one multi-row INSERT per table) instead of one per job
    subject: Mapped[Subject | None] = relationship(foreign_keys=[subject_id], lazy="raise")
    render: Mapped[Render | None] = relationship(foreign_keys=[render_id], lazy="raise")
    position: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(32))
    queue: Mapped[str] = mapped_column(String(16))  # cpu | gpu
    status: Mapped[str] = mapped_column(String(16), default=JobState.queued.value)
    progress: Mapped[float] = mapped_column(Float, default=0.0)  # 0..1 within the stage
    message: Mapped[str | None] = mapped_column(Text, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    task_id: Mapped[str | None] = mapped_column(String(64), nullable=True)  # the Celery task running it
    worker: Mapped[str | None] = mapped_column(String(200), nullable=True)
    # the running owner's lease: a new token at every claim; its progress, outputs and finish are
    # written only while the row still holds that token (a stale owner finds another and stops)
    lease: Mapped[str | None] = mapped_column(String(32), nullable=True)
    # delivery (the outbox): a queued stage is due from ``ready_at`` (None: it waits for an earlier
    # stage, or for its subject); ``sent_at`` is when its task was last handed to the broker (None: not
    # yet, or to be sent again). The scheduler sends what is due and unsent, and again what was lost.
    ready_at: Mapped[datetime | None] = mapped_column(When, nullable=True)
    sent_at: Mapped[datetime | None] = mapped_column(When, nullable=True)
    # the W3C traceparent of the request that created the job (or of the stage that made this one due):
    # every send of this stage, the scheduler's too, continues that trace (shared/telemetry/propagation.py)
    trace_context: Mapped[str | None] = mapped_column(String(128), nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(When, nullable=True)
    started_at: Mapped[datetime | None] = mapped_column(When, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(When, nullable=True)


class Event(Base):
    """The tenant's event log: one row per state, stage or progress change of a job. Its id orders the
    SSE stream (``id:`` / ``Last-Event-ID``) and the webhook deliveries."""

    __tablename__ = "events"
    __table_args__ = (
        Index("ix_events_tenant_id", "tenant_id", "id"),
        Index("ix_events_created_at", "created_at"),  # retention prunes by age
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    type: Mapped[str] = mapped_column(String(64))  # job | subject.succeeded | render.failed | ...
    resource: Mapped[str] = mapped_column(String(16))  # subject | render
    resource_id: Mapped[str] = mapped_column(Id)
    data: Mapped[dict[str, Any]] = mapped_column(JSON)  # the resource as the API shows it
    created_at: Mapped[datetime] = mapped_column(When, default=utcnow)


class Webhook(Base):
    """A tenant's endpoint for state changes. The signing secret is needed to sign every delivery, so it
    is kept (it is shown to the client once, at creation, and never returned again)."""

    __tablename__ = "webhooks"

    id: Mapped[str] = mapped_column(Id, primary_key=True, default=new_id)
    tenant_id: Mapped[str] = _tenant()
    url: Mapped[str] = mapped_column(String(2000))
    events: Mapped[list[str]] = mapped_column(JSON)  # ["subject.succeeded", "*.failed", ...]
    secret: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(When, default=utcnow)
    disabled_at: Mapped[datetime | None] = mapped_column(When, nullable=True)


class WebhookDelivery(Base):
    """One event to one webhook, retried with backoff until delivered or out of attempts."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        UniqueConstraint("webhook_id", "event_id", name="uq_webhook_deliveries_webhook_event"),
        Index("ix_webhook_deliveries_status_next", "status", "next_attempt_at"),
    )

    id: Mapped[str] = mapped_column(Id, primary_key=True, default=new_id)  # the webhook-id header
    tenant_id: Mapped[str] = _tenant()
    webhook_id: Mapped[str] = mapped_column(ForeignKey("webhooks.id", ondelete="CASCADE"))
    event_id: Mapped[int] = mapped_column(ForeignKey("events.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending | delivered | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(When, default=utcnow)
    last_status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(When, default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(When, nullable=True)


class IdempotencyKey(Base):
    """A POST's ``Idempotency-Key``: the same key with the same request gets the original response; the
    same key with another request is a 409. Kept at least 24 h (``expires_at``)."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (UniqueConstraint("tenant_id", "key", name="uq_idempotency_keys_tenant_key"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(200))
    request_hash: Mapped[str] = mapped_column(String(64))  # method, path and body, hashed
    status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)  # None while the first runs
    response: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    headers: Mapped[dict[str, str] | None] = mapped_column(JSON, nullable=True)  # e.g. Location
    created_at: Mapped[datetime] = mapped_column(When, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(When, index=True)


class SchedulerLease(Base):
    """Who runs a singleton loop (``synctalk scheduler``): the row's owner until ``expires_at``. A
    process renews its lease every pass; another takes it over only once it expired."""

    __tablename__ = "scheduler_leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(200))
    expires_at: Mapped[datetime] = mapped_column(When)
    acquired_at: Mapped[datetime] = mapped_column(When, default=utcnow)


class WorkerInfo(Base):
    """What each worker process reports of itself (its queues and accelerator) while it runs: the API
    picks the default training profile from it."""

    __tablename__ = "workers"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    queues: Mapped[str] = mapped_column(String(64))  # "cpu", "gpu" or "cpu,gpu"
    accelerator: Mapped[str | None] = mapped_column(String(200), nullable=True)  # e.g. "cuda: NVIDIA H100"
    started_at: Mapped[datetime] = mapped_column(When, default=utcnow)
    seen_at: Mapped[datetime] = mapped_column(When, default=utcnow, index=True)


class StorageDeletion(Base):
    """Stored files to delete (a deleted subject's, its renders' and uploads'): written in the transaction
    that deletes the rows, removed once storage confirmed; the scheduler retries what storage refused."""

    __tablename__ = "storage_deletions"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(String(32), index=True)  # no foreign key: it outlives rows
    prefix: Mapped[str | None] = mapped_column(String(512), nullable=True)  # a folder: everything under it
    key: Mapped[str | None] = mapped_column(String(512), nullable=True)  # one object
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(When, default=utcnow)
    next_attempt_at: Mapped[datetime] = mapped_column(When, default=utcnow, index=True)
