"""``Client``: the v1 API from a script, one call at a time (``AsyncClient`` in aio.py for many at once).

from services.client import Client
with Client() as api:                      # SYNCTALK_API_URL, SYNCTALK_API_KEY
    subject = api.upload_subject("ann.mp4", name="Ann")
    api.wait_subject(subject["id"])
    render = api.render_file(subject["id"], "line.wav")
    api.wait_render(render["id"])
    api.download_video(render["id"], "line.mp4")
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from services.client import transport as t
from services.client.config import content_type_of, resolve
from services.client.errors import ClientError, ConnectionFailed
from services.client.retry import RetryPolicy
from services.client.routes import Call, Routes
from services.client.sse import SseParser
from services.client.types import FINAL, Event, Job, Render, Subject, Upload


class Retryable(Exception):
    """An answer worth another try (429, 5xx, our own POST still running)."""

    def __init__(self, error: ClientError, retry_after: float | None) -> None:
        super().__init__(str(error))
        self.error, self.retry_after = error, retry_after


class Client(Routes):
    def __init__(
        self, url: str | None = None, api_key: str | None = None, *, timeout: float = 60.0,
        retry: RetryPolicy | None = None, max_connections: int = 20, sleep: Callable[[float], None] = time.sleep,
    ) -> None:  # fmt: skip
        self.url, key = resolve(url, api_key)
        self.retry = retry or RetryPolicy()
        self._sleep = sleep
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self._http = httpx.Client(
            base_url=self.url, headers=t.base_headers(key), timeout=timeout, limits=limits
        )
        # presigned storage URLs get no API key (S3 refuses a second form of authentication)
        self._storage = httpx.Client(timeout=timeout, limits=limits)

    def close(self) -> None:
        self._http.close()
        self._storage.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- one request, retried
    def _retrying(self, attempt_fn: Callable[[], Any]) -> Any:
        for attempt in itertools.count(1):
            try:
                return attempt_fn()
            except Retryable as exc:
                wait, last = self.retry.delay(attempt, exc.retry_after), exc.error
            except t.TRANSIENT as exc:
                wait = self.retry.delay(attempt)
                last = ConnectionFailed(f"{self.url}: {type(exc).__name__}: {exc or 'connection lost'}")
            if wait is None:
                raise last
            self._sleep(wait)
        raise AssertionError("unreachable")

    def _run(self, call: Call) -> Any:
        headers = t.call_headers(call)

        def attempt() -> Any:
            files = call.files() if call.files else None
            try:
                r = self._http.request(call.method, call.path, params=call.params, json=call.json,
                                       data=call.data, files=files, headers=headers)  # fmt: skip
            finally:
                for _, part in files or ():
                    part[1].close()
            if r.status_code not in call.answers:
                again, after = t.retry_hint(r)
                if again:
                    raise Retryable(t.status_error(r), after)
            return t.read(call, r)

        return self._retrying(attempt)

    # --- lists, every page
    def iter_renders(self, **filters: Any) -> Iterator[Render]:
        yield from self._iter(self.list_renders, filters)

    def iter_subjects(self, **filters: Any) -> Iterator[Subject]:
        yield from self._iter(self.list_subjects, filters)

    def _iter(self, lister: Callable[..., Any], filters: dict[str, Any]) -> Iterator[Any]:
        cursor = None
        while True:
            page = lister(limit=filters.pop("limit", 500), cursor=cursor, **filters)
            yield from page["items"]
            cursor = page["next_cursor"]
            if not cursor:
                return

    # --- uploads: the file streams from disk (never read whole into memory)
    def put_file(self, upload: Upload, path: str | Path) -> None:
        """PUT a file to an upload's presigned URL (again from its start on each retry)."""
        path = Path(path)
        size = path.stat().st_size
        headers = {**upload.get("headers", {}), "Content-Length": str(size)}

        def attempt() -> None:
            with open(path, "rb") as fh:
                r = self._storage.request(
                    upload.get("method", "PUT"), upload["url"], content=fh, headers=headers
                )
            again, after = t.retry_hint(r)
            if again:
                raise Retryable(t.status_error(r), after)
            if r.status_code >= 400:
                raise t.status_error(r)

        self._retrying(attempt)

    def upload_file(
        self, path: str | Path, content_type: str | None = None, *, idempotency_key: str | None = None
    ) -> Upload:
        """POST /v1/uploads, then the PUT: the returned upload's ``id`` can be named in a create."""
        path = Path(path)
        up = self.create_upload(path.name, content_type or content_type_of(path.name), path.stat().st_size,
                                idempotency_key=idempotency_key)  # fmt: skip
        self.put_file(up, path)
        return up

    def upload_subject(
        self, video: str | Path, *, name: str | None = None, profile: str | None = None
    ) -> Subject:
        up = self.upload_file(video)
        return self.create_subject(upload_id=up["id"], name=name, profile=profile)

    def render_file(self, subject_id: str, audio: str | Path, **options: Any) -> Render:
        up = self.upload_file(audio)
        return self.create_render(subject_id, upload_id=up["id"], **options)

    # --- waiting
    def wait_subject(self, subject_id: str, **kw: Any) -> Subject:
        return self._wait(self.get_subject, subject_id, **kw)

    def wait_render(self, render_id: str, **kw: Any) -> Render:
        return self._wait(self.get_render, render_id, **kw)

    def _wait(
        self, getter: Callable[[str], Any], job_id: str, *, poll_s: float = 2.0, timeout: float | None = None,
        on_progress: Callable[[Job], None] | None = None,
    ) -> Any:  # fmt: skip
        """Poll until the job is final; ``on_progress`` sees every document read."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            doc = getter(job_id)
            if on_progress is not None:
                on_progress(doc)
            if doc.get("status") in FINAL:
                return doc
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"{job_id} is still {doc.get('status')} after {timeout:.0f} s")
            time.sleep(poll_s)

    # --- downloads, resumed where they stopped
    def download_video(
        self, render_id: str, dest: str | Path, *, on_bytes: Callable[[int], None] | None = None
    ) -> Path:
        """The render's MP4 to ``dest``: bytes go to ``dest.part`` and a rerun (or a retry after a dropped
        connection) asks only for the rest with ``Range``; renamed to ``dest`` once complete."""
        return self._download(lambda h: self._http.stream("GET", f"/v1/renders/{render_id}/video", headers=h),
                              Path(dest), on_bytes)  # fmt: skip

    def download_url(
        self, url: str, dest: str | Path, *, on_bytes: Callable[[int], None] | None = None
    ) -> Path:
        """A presigned (or any key-less) URL to ``dest``, resumed like ``download_video``."""
        return self._download(lambda h: self._storage.stream("GET", url, headers=h), Path(dest), on_bytes)

    def _download(
        self, open_stream: Callable[[dict], Any], dest: Path, on_bytes: Callable[[int], None] | None
    ) -> Path:
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = t.part_path(dest)

        def attempt() -> Path:
            have = part.stat().st_size if part.exists() else 0
            with open_stream(t.range_headers(have)) as r:
                if r.is_redirect:  # the API hands out a short-lived storage URL
                    location = r.headers["location"]
                    with self._storage.stream("GET", location, headers=t.range_headers(have)) as r2:
                        return self._save(r2, part, dest, have, on_bytes)
                return self._save(r, part, dest, have, on_bytes)

        return self._retrying(attempt)

    def _save(self, r: httpx.Response, part: Path, dest: Path, have: int, on_bytes: Any) -> Path:
        if r.status_code >= 400 and r.status_code != 416:
            r.read()
            again, after = t.retry_hint(r)
            if again:
                raise Retryable(t.status_error(r), after)
            raise t.status_error(r)
        offset, total = t.resume_offset(r.status_code, r.headers, have)
        if offset is None:
            return t.finish_part(part, dest, total)
        if r.status_code == 416 and offset is not None:  # the part is not a prefix we can verify: anew
            part.unlink(missing_ok=True)
            raise Retryable(ConnectionFailed(f"{r.url} refused the range of {part.name}"), None)
        if offset > have:  # a range we did not ask for: start again from an empty part
            part.unlink(missing_ok=True)
            raise Retryable(ConnectionFailed(f"unexpected Content-Range from {r.url}"), None)
        with open(part, "r+b" if part.exists() else "wb") as fh:
            fh.seek(offset)
            fh.truncate()
            for chunk in r.iter_bytes(t.WRITE_CHUNK):
                fh.write(chunk)
                if on_bytes is not None:
                    on_bytes(len(chunk))
        return t.finish_part(part, dest, total)

    # --- live events
    def events(
        self, *, subject_id: str | None = None, render_id: str | None = None, batch_id: str | None = None,
        last_event_id: str | None = None,
    ) -> Iterator[Event]:  # fmt: skip
        """``GET /v1/events`` as an endless iterator; a dropped stream reconnects with Last-Event-ID."""
        params = {
            k: v for k, v in dict(subject_id=subject_id, render_id=render_id, batch_id=batch_id).items() if v
        }
        attempt = 0
        while True:
            headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
            try:
                timeout = httpx.Timeout(60.0, connect=10.0)  # a keep-alive comes every 15 s
                with self._http.stream(
                    "GET", "/v1/events", params=params, headers=headers, timeout=timeout
                ) as r:
                    if r.status_code >= 400:
                        r.read()
                        again, after = t.retry_hint(r)
                        if not again:
                            raise t.status_error(r)
                        raise Retryable(t.status_error(r), after)
                    parser = SseParser()
                    for line in r.iter_lines():
                        ev = parser.feed(line)
                        if ev is not None:
                            attempt = 0
                            last_event_id = ev["id"] or last_event_id
                            yield ev
            except (Retryable, *t.TRANSIENT) as exc:
                attempt += 1
                wait = self.retry.delay(attempt, getattr(exc, "retry_after", None))
                if wait is None:
                    raise exc.error if isinstance(exc, Retryable) else ConnectionFailed(str(exc)) from exc
                self._sleep(wait)
