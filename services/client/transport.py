"""What the sync and async clients share around one HTTP exchange: the headers sent, how an answer is
read (result or typed error), and how a resumable download reads a ``Range`` answer."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import httpx

from services.client.config import USER_AGENT, new_key
from services.client.errors import ApiError, error_from, parse_retry_after
from services.client.retry import should_retry
from services.client.routes import Call

# what a dropped or refused connection looks like in httpx (timeouts included): always worth a retry
TRANSIENT = (httpx.TransportError,)
CHUNK = 1 << 20  # reads of a file being uploaded
WRITE_CHUNK = 1 << 16  # a download is written as it arrives: a cut connection keeps what came


def base_headers(api_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}", "User-Agent": USER_AGENT}


def call_headers(call: Call) -> dict[str, str]:
    """Per-call headers; a POST gets its Idempotency-Key here, once, so every retry repeats it."""
    if call.method == "POST" and call.idempotency_key is None:
        call.idempotency_key = new_key()
    return {"Idempotency-Key": call.idempotency_key} if call.idempotency_key else {}


def _body(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text[:2000]


def retry_hint(response: httpx.Response) -> tuple[bool, float | None]:
    """(worth another try, the server's Retry-After in seconds)."""
    if response.status_code < 400:
        return False, None
    code = None
    if response.status_code == 409:
        body = _body(response)
        code = body.get("code") if isinstance(body, dict) else None
    return should_retry(response.status_code, code), parse_retry_after(response.headers.get("retry-after"))


def read(call: Call, response: httpx.Response) -> Any:
    """The call's result, or the typed error of a refusal."""
    if response.status_code >= 400 and response.status_code not in call.answers:
        raise error_from(response.status_code, _body(response), response.headers)
    if call.expect == "none":
        return None
    if call.expect == "text":
        return response.text
    return _body(response)


def status_error(response: httpx.Response) -> ApiError:
    return error_from(response.status_code, _body(response), response.headers)


# --- resumable downloads: bytes land in DEST.part, renamed to DEST once complete and flushed to disk


def part_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def range_headers(have: int) -> dict[str, str]:
    return {"Range": f"bytes={have}-"} if have > 0 else {}


_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")
_UNSATISFIED = re.compile(r"bytes\s+\*/(\d+)")


def resume_offset(status: int, headers: httpx.Headers, have: int) -> tuple[int | None, int | None]:
    """(offset the body starts at, total size or None) for a download answer to ``Range: bytes=have-``;
    offset None: the part already holds the whole file (416 naming exactly its size)."""
    total = headers.get("content-length")
    if status == 206:
        m = _CONTENT_RANGE.match(headers.get("content-range", ""))
        if not m:
            return 0, None  # a range we cannot read: start again
        start = int(m.group(1))
        return start, (int(m.group(3)) if m.group(3) != "*" else None)
    if status == 416:
        m = _UNSATISFIED.match(headers.get("content-range", ""))
        if m and int(m.group(1)) == have:
            return None, have
        return 0, None
    # 200: the server ignored Range (the whole file follows)
    return 0, int(total) if total and total.isdigit() else None


def finish_part(part: Path, dest: Path, total: int | None) -> Path:
    """fsync the part and rename it into place; a size that does not match is kept as a part (retry)."""
    size = part.stat().st_size
    if total is not None and size != total:
        raise OSError(f"{part} holds {size} of {total} bytes")
    with open(part, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(part, dest)
    _fsync_dir(dest.parent)
    return dest


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
