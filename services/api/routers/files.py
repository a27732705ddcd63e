"""``GET``/``PUT /storage/{key}``: the signed URLs of the local storage backend (the embedded default),
what S3's presigned URLs are on the real stack. No API key: the URL's signature is the permission (one
method, one key, until its expiry; a PUT also its Content-Type and size limit).
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from services.api.deps import PlatformDep
from services.api.problems import ApiProblem
from shared.storage.base import SignatureError, StorageError

router = APIRouter(tags=["storage"], include_in_schema=False)
CHUNK = 1 << 20


def _local(platform):
    storage = platform.storage
    if not hasattr(storage, "verify_signed"):
        raise ApiProblem(404, "not_found", "This API serves no storage: files come from object storage.")
    return storage


def _verify(storage, method: str, key: str, request: Request):
    try:
        return storage.verify_signed(
            method, key, dict(request.query_params), content_type=request.headers.get("content-type")
        )
    except SignatureError as exc:
        raise ApiProblem(403, exc.code, str(exc)) from None


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The one range a ``Range: bytes=...`` header asks for, as (first, last) inclusive; None for the
    whole file (no header, another unit, or several ranges: RFC 9110 lets a server send it all).
    Raises ``ValueError`` when the range cannot be satisfied (416)."""
    if not header:
        return None
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    if not dash:
        return None
    try:
        if first == "":  # the last N bytes
            n = int(last)
            if n <= 0 or size == 0:
                raise ValueError("an empty suffix range")
            return max(0, size - n), size - 1
        start = int(first)
        end = int(last) if last else size - 1
    except ValueError:
        raise ValueError(f"not a byte range: {header!r}") from None
    if start < 0 or end < start or start >= size:
        raise ValueError(f"range {header!r} is outside the file's {size} bytes")
    return start, min(end, size - 1)


@router.get("/storage/{key:path}")
def download(key: str, request: Request, platform: PlatformDep) -> Response:
    """The file, or the byte range asked for (206, so an interrupted download resumes where it stopped)."""
    storage = _local(platform)
    params = _verify(storage, "GET", key, request)
    headers = {**storage.response_headers(key, params), "Accept-Ranges": "bytes"}
    size = int(headers["Content-Length"])
    try:
        wanted = byte_range(request.headers.get("range"), size)
    except ValueError as exc:
        raise ApiProblem(
            416,
            "range_not_satisfiable",
            str(exc),
            {"Content-Range": f"bytes */{size}", "Accept-Ranges": "bytes"},
        ) from None
    start, end, status = 0, size - 1, 200
    if wanted is not None:
        start, end, status = wanted[0], wanted[1], 206
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        headers["Content-Length"] = str(end - start + 1)
    cm = storage.open_read(key)
    fh = cm.__enter__()
    fh.seek(start)

    def chunks():
        try:
            left = end - start + 1
            while left > 0 and (chunk := fh.read(min(CHUNK, left))):
                left -= len(chunk)
                yield chunk
        finally:
            cm.__exit__(None, None, None)

    return StreamingResponse(
        chunks(), status_code=status, headers=headers, media_type=headers.get("Content-Type")
    )


@router.put("/storage/{key:path}", status_code=200)
async def upload(key: str, request: Request, platform: PlatformDep) -> Response:
    """The body streams to a temporary file beside the key and is published only when complete and
    within the size the URL was signed for."""
    storage = _local(platform)
    params = _verify(storage, "PUT", key, request)
    size = request.headers.get("content-length")
    if params.max_bytes is not None and size and size.isdigit() and int(size) > params.max_bytes:
        raise ApiProblem(413, "file_too_large", f"This upload may carry at most {params.max_bytes} bytes.")
    writer = await run_in_threadpool(storage.writer, key, params.max_bytes)
    try:
        async for chunk in request.stream():
            if chunk:
                await run_in_threadpool(writer.write, chunk)
        written = await run_in_threadpool(writer.commit)
    except StorageError as exc:
        writer.abort()
        status = 413 if exc.code == "file_too_large" else 503
        raise ApiProblem(status, exc.code, str(exc)) from None
    except BaseException:
        writer.abort()
        raise
    return Response(status_code=200, headers={"ETag": f'"{written}"'})
