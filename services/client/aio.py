"""``AsyncClient``: the same methods as ``Client`` (each returns an awaitable), for many requests at once
from one thread (the bulk dubbing runner uses it)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

from services.client import transport as t
from services.client.config import content_type_of, resolve
from services.client.errors import ConnectionFailed
from services.client.retry import RetryPolicy
from services.client.routes import Call, Routes
from services.client.sse import SseParser
from services.client.sync import Retryable
from services.client.types import FINAL, Event, Job, Render, Subject, Upload


async def _file_chunks(path: Path) -> AsyncIterator[bytes]:
    """The file in 1 MiB reads (each in a thread: a slow disk never stalls the event loop)."""
    fh = await asyncio.to_thread(open, path, "rb")
    try:
        while chunk := await asyncio.to_thread(fh.read, t.CHUNK):
            yield chunk
    finally:
        fh.close()


class AsyncClient(Routes):
    def __init__(
        self, url: str | None = None, api_key: str | None = None, *, timeout: float = 60.0,
        retry: RetryPolicy | None = None, max_connections: int = 32,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:  # fmt: skip
        self.url, key = resolve(url, api_key)
        self.retry = retry or RetryPolicy()
        self._sleep = sleep
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self._http = httpx.AsyncClient(
            base_url=self.url, headers=t.base_headers(key), timeout=timeout, limits=limits
        )
        self._storage = httpx.AsyncClient(timeout=timeout, limits=limits)

    async def aclose(self) -> None:
        await self._http.aclose()
        await self._storage.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _retrying(self, attempt_fn: Callable[[], Awaitable[Any]]) -> Any:
        for attempt in itertools.count(1):
            try:
                return await attempt_fn()
            except Retryable as exc:
                wait, last = self.retry.delay(attempt, exc.retry_after), exc.error
            except t.TRANSIENT as exc:
                wait = self.retry.delay(attempt)
                last = ConnectionFailed(f"{self.url}: {type(exc).__name__}: {exc or 'connection lost'}")
            if wait is None:
                raise last
            await self._sleep(wait)
        raise AssertionError("unreachable")

    def _run(self, call: Call) -> Awaitable[Any]:
        headers = t.call_headers(call)

        async def attempt() -> Any:
            files = call.files() if call.files else None
            try:
                r = await self._http.request(call.method, call.path, params=call.params, json=call.json,
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

    async def iter_renders(self, **filters: Any) -> AsyncIterator[Render]:
        cursor = None
        limit = filters.pop("limit", 500)
        while True:
            page = await self.list_renders(limit=limit, cursor=cursor, **filters)
            for item in page["items"]:
                yield item
            if not (cursor := page["next_cursor"]):
                return

    # --- uploads
    async def put_file(self, upload: Upload, path: str | Path) -> None:
        path = Path(path)
        headers = {**upload.get("headers", {}), "Content-Length": str(path.stat().st_size)}

        async def attempt() -> None:
            r = await self._storage.request(upload.get("method", "PUT"), upload["url"], content=_file_chunks(path),
                                            headers=headers)  # fmt: skip
            again, after = t.retry_hint(r)
            if again:
                raise Retryable(t.status_error(r), after)
            if r.status_code >= 400:
                raise t.status_error(r)

        await self._retrying(attempt)

    async def upload_file(
        self, path: str | Path, content_type: str | None = None, *, idempotency_key: str | None = None
    ) -> Upload:
        path = Path(path)
        up = await self.create_upload(path.name, content_type or content_type_of(path.name), path.stat().st_size,
                                      idempotency_key=idempotency_key)  # fmt: skip
        await self.put_file(up, path)
        return up

    async def upload_subject(
        self, video: str | Path, *, name: str | None = None, profile: str | None = None
    ) -> Subject:
        up = await self.upload_file(video)
        return await self.create_subject(upload_id=up["id"], name=name, profile=profile)

    async def render_file(self, subject_id: str, audio: str | Path, **options: Any) -> Render:
        up = await self.upload_file(audio)
        return await self.create_render(subject_id, upload_id=up["id"], **options)

    # --- waiting
    async def wait_subject(self, subject_id: str, **kw: Any) -> Subject:
        return await self._wait(self.get_subject, subject_id, **kw)

    async def wait_render(self, render_id: str, **kw: Any) -> Render:
        return await self._wait(self.get_render, render_id, **kw)

    async def _wait(
        self, getter: Callable[[str], Awaitable[Any]], job_id: str, *, poll_s: float = 2.0,
        timeout: float | None = None, on_progress: Callable[[Job], None] | None = None,
    ) -> Any:  # fmt: skip
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            doc = await getter(job_id)
            if on_progress is not None:
                on_progress(doc)
            if doc.get("status") in FINAL:
                return doc
            if deadline is not None and loop.time() > deadline:
                raise TimeoutError(f"{job_id} is still {doc.get('status')} after {timeout:.0f} s")
            await asyncio.sleep(poll_s)

    # --- downloads, resumed where they stopped
    async def download_video(
        self, render_id: str, dest: str | Path, *, on_bytes: Callable[[int], None] | None = None
    ) -> Path:
        return await self._download(
            lambda h: self._http.stream("GET", f"/v1/renders/{render_id}/video", headers=h),
            Path(dest),
            on_bytes,
        )

    async def download_url(
        self, url: str, dest: str | Path, *, on_bytes: Callable[[int], None] | None = None
    ) -> Path:
        return await self._download(
            lambda h: self._storage.stream("GET", url, headers=h), Path(dest), on_bytes
        )

    async def _download(self, open_stream: Callable[[dict], Any], dest: Path, on_bytes: Any) -> Path:
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = t.part_path(dest)

        async def attempt() -> Path:
            have = part.stat().st_size if part.exists() else 0
            async with open_stream(t.range_headers(have)) as r:
                if r.is_redirect:
                    location = r.headers["location"]
                    async with self._storage.stream("GET", location, headers=t.range_headers(have)) as r2:
                        return await self._save(r2, part, dest, have, on_bytes)
                return await self._save(r, part, dest, have, on_bytes)

        return await self._retrying(attempt)

    async def _save(self, r: httpx.Response, part: Path, dest: Path, have: int, on_bytes: Any) -> Path:
        if r.status_code >= 400 and r.status_code != 416:
            await r.aread()
            again, after = t.retry_hint(r)
            if again:
                raise Retryable(t.status_error(r), after)
            raise t.status_error(r)
        offset, total = t.resume_offset(r.status_code, r.headers, have)
        if offset is None:
            return await asyncio.to_thread(t.finish_part, part, dest, total)
        if r.status_code == 416 and offset is not None:  # the part is not a prefix we can verify: anew
            part.unlink(missing_ok=True)
            raise Retryable(ConnectionFailed(f"{r.url} refused the range of {part.name}"), None)
        if offset > have:
            part.unlink(missing_ok=True)
            raise Retryable(ConnectionFailed(f"unexpected Content-Range from {r.url}"), None)
        with open(part, "r+b" if part.exists() else "wb") as fh:
            fh.seek(offset)
            fh.truncate()
            async for chunk in r.aiter_bytes(t.WRITE_CHUNK):
                fh.write(chunk)
                if on_bytes is not None:
                    on_bytes(len(chunk))
        return await asyncio.to_thread(t.finish_part, part, dest, total)

    # --- live events
    async def events(
        self, *, subject_id: str | None = None, render_id: str | None = None, batch_id: str | None = None,
        last_event_id: str | None = None,
    ) -> AsyncIterator[Event]:  # fmt: skip
        params = {
            k: v for k, v in dict(subject_id=subject_id, render_id=render_id, batch_id=batch_id).items() if v
        }
        attempt = 0
        while True:
            headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
            try:
                timeout = httpx.Timeout(60.0, connect=10.0)
                async with self._http.stream("GET", "/v1/events", params=params, headers=headers,
                                             timeout=timeout) as r:  # fmt: skip
                    if r.status_code >= 400:
                        await r.aread()
                        again, after = t.retry_hint(r)
                        if not again:
                            raise t.status_error(r)
                        raise Retryable(t.status_error(r), after)
                    parser = SseParser()
                    async for line in r.aiter_lines():
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
                await self._sleep(wait)
