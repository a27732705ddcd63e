"""What a worker process keeps between tasks: settings, the database engine, storage (retried through
outages), the Celery app, its local cache (bounded, cache.py) and the subjects it has loaded for
rendering (the model cache)."""

from __future__ import annotations

import os
import socket
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from sqlalchemy import Engine

from gpu_worker.tasks.cache import WorkerCache
from shared.settings import Settings, get_settings
from shared.storage.retrying import RetryingStorage


@dataclass
class WorkerContext:
    settings: Settings
    engine: Engine
    storage: object  # shared.storage.base.Storage
    celery: object  # celery.Celery
    cache_dir: Path
    cache: WorkerCache
    _renderers: OrderedDict = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def worker(self) -> str:
        """This process (a pool child once forked, not the parent that built the context)."""
        return f"{socket.gethostname()}:{os.getpid()}"

    def renderer(self, subject_id: str, build):
        """The loaded subject for ``subject_id`` (``build()`` makes it on a miss): many renders of one
        subject load its model once. The least recently used is closed beyond ``model_cache_size``.
        A loaded subject holds its cache entry (its files are not evicted while it is loaded)."""
        with self._lock:
            hit = self._renderers.pop(subject_id, None)
            if hit is None:
                hit = build()
                self.cache.hold("subjects", subject_id)
            self._renderers[subject_id] = hit
            while len(self._renderers) > max(1, self.settings.model_cache_size):
                old_id, old = self._renderers.popitem(last=False)
                old.close()
                self.cache.release("subjects", old_id)
            return hit

    def forget(self, subject_id: str) -> None:
        with self._lock:
            old = self._renderers.pop(subject_id, None)
        if old is not None:
            old.close()
            self.cache.release("subjects", subject_id)

    def loaded(self) -> list[str]:
        with self._lock:
            return list(self._renderers)


@lru_cache(maxsize=1)
def worker_context(celery=None) -> WorkerContext:
    """The process's context, built on first use from the environment's settings."""
    return build_context(get_settings(), celery)


def build_context(settings: Settings, celery=None) -> WorkerContext:
    """``celery``: the app that sends the next stages (the worker's own; a new one from the settings)."""
    from shared.db.schema import ensure_schema
    from shared.db.session import make_engine
    from shared.queue.app import make_celery
    from shared.storage import storage_from_settings

    ensure_schema(settings, verify=False)  # the embedded default makes its own schema, for any command
    cache = settings.resolved_worker_cache_dir
    cache.mkdir(parents=True, exist_ok=True)
    return WorkerContext(
        settings=settings,
        engine=make_engine(settings),
        # a storage outage inside a stage is waited out, request by request, before the stage gives up
        storage=RetryingStorage(storage_from_settings(settings), settings.transient_retry_s),
        celery=celery or make_celery(settings),
        cache_dir=cache,
        cache=WorkerCache(cache, settings.worker_cache_max_bytes),
    )
