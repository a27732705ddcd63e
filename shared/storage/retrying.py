"""Storage that rides out outages: every request is retried while storage answers "not now".

Workers wrap their storage in :class:`RetryingStorage`: a 30-second S3 outage during a checkpoint
publish then costs 30 seconds, not the training job. Only transient errors (``StorageError.transient``:
unreachable, timed out, 5xx, throttling) are retried, with exponential backoff and jitter, until
``budget_s`` has passed since the first failure; a permanent error (a missing object, refused
credentials) is raised at once. botocore's own quick retries (a few seconds) happen below this.

The wrapper retries each *request*, not a whole operation: ``upload_dir`` and ``sync_dir`` (inherited
from :class:`Storage`) call this object's ``put_file`` and ``get_file``, so a folder interrupted by an
outage resumes with the file it was sending, never the files already sent.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import BinaryIO, TypeVar

from opentelemetry import trace

from shared.storage.base import SignedRequest, Storage, StorageError

log = logging.getLogger(__name__)
T = TypeVar("T")


def backoff_delays(
    budget_s: float, *, first_s: float = 0.5, cap_s: float = 15.0, sleep=time.sleep
) -> Iterator[float]:
    """Waits between tries: ``first_s`` doubling up to ``cap_s``, each jittered by +-25 % (clients that
    failed together do not retry together), until ``budget_s`` seconds of waiting are spent."""
    spent, delay = 0.0, first_s
    while spent < budget_s:
        wait = min(delay * random.uniform(0.75, 1.25), budget_s - spent)
        yield wait
        spent += wait
        delay = min(delay * 2, cap_s)


def retry_transient(
    fn: Callable[[], T], budget_s: float, what: str, *, is_transient: Callable[[BaseException], bool],
    sleep: Callable[[float], None] = time.sleep,
) -> T:  # fmt: skip
    """``fn()``, tried again after each transient failure until ``budget_s`` of waiting is spent; the last
    error is raised then (and any other error at once)."""
    delays = backoff_delays(budget_s)
    failures = 0
    while True:
        try:
            return fn()
        except Exception as exc:
            if not is_transient(exc):
                raise
            wait = next(delays, None)
            if wait is None:
                raise
            failures += 1
            if failures == 1 or failures % 10 == 0:
                log.warning("%s failed (%s); retrying for up to %.0f s", what, exc, budget_s)
            _retry_event(what, exc, wait)
            sleep(wait)


def _retry_event(what: str, exc: Exception, wait_s: float) -> None:
    """Each retry as an event of the current span (the storage operation's, or the stage's)."""
    span = trace.get_current_span()
    if span.is_recording():
        span.add_event("retry", {"synctalk.retry.what": what, "synctalk.retry.error": type(exc).__name__,
                                 "synctalk.retry.wait_s": round(wait_s, 3)})  # fmt: skip


def storage_transient(exc: BaseException) -> bool:
    return isinstance(exc, StorageError) and exc.transient


class RetryingStorage(Storage):
    """``inner``'s requests, each retried through transient errors for up to ``budget_s`` seconds."""

    def __init__(self, inner: Storage, budget_s: float) -> None:
        self.inner, self.budget_s = inner, budget_s

    def __repr__(self) -> str:
        return f"RetryingStorage({self.inner!r}, budget_s={self.budget_s:g})"

    def _retry(self, what: str, fn: Callable[[], T]) -> T:
        return retry_transient(fn, self.budget_s, f"storage {what}", is_transient=storage_transient)

    # --- writes: a file on disk can be sent again; a stream cannot (put_stream is not retried) ---
    def put_file(self, key: str, path: Path, *, content_type: str | None = None) -> None:
        self._retry("put", lambda: self.inner.put_file(key, path, content_type=content_type))

    def put_stream(self, key: str, stream: BinaryIO, *, content_type: str | None = None) -> int:
        return self.inner.put_stream(key, stream, content_type=content_type)

    def put_bytes(self, key: str, data: bytes, *, content_type: str | None = None) -> None:
        self._retry("put", lambda: self.inner.put_bytes(key, data, content_type=content_type))

    # --- reads ---
    def get_file(self, key: str, path: Path) -> Path:
        return self._retry("get", lambda: self.inner.get_file(key, path))

    def open_read(self, key: str) -> AbstractContextManager[BinaryIO]:
        return self._retry("open", lambda: self.inner.open_read(key))

    def read_bytes(self, key: str) -> bytes:
        return self._retry("get", lambda: self.inner.read_bytes(key))

    def get_range(self, key: str, start: int, length: int, path: Path) -> Path:
        return self._retry("get", lambda: self.inner.get_range(key, start, length, path))

    def read_head(self, key: str, n: int) -> tuple[bytes, int]:
        return self._retry("get", lambda: self.inner.read_head(key, n))

    def exists(self, key: str) -> bool:
        return self._retry("head", lambda: self.inner.exists(key))

    def size(self, key: str) -> int:
        return self._retry("head", lambda: self.inner.size(key))

    # --- deletes and listings ---
    def delete(self, key: str) -> None:
        self._retry("delete", lambda: self.inner.delete(key))

    def delete_prefix(self, prefix: str) -> int:
        return self._retry("delete", lambda: self.inner.delete_prefix(prefix))

    def list(self, prefix: str = "") -> Iterator[str]:
        return iter(self._retry("list", lambda: list(self.inner.list(prefix))))

    # --- signing is local: nothing to retry ---
    def presign_get(self, key: str, expires_s: int = 900, *, filename: str | None = None) -> SignedRequest:
        return self.inner.presign_get(key, expires_s, filename=filename)

    def presign_put(
        self, key: str, content_type: str, expires_s: int = 900, *, max_bytes: int | None = None
    ) -> SignedRequest:
        return self.inner.presign_put(key, content_type, expires_s, max_bytes=max_bytes)

    def check(self) -> None:
        self.inner.check()
