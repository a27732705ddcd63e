"""Typed errors of the client: every refusal of the API carries its problem JSON (RFC 9457).

``ApiError`` is raised for any 4xx/5xx answer; a subclass per status a script usually handles on its
own (``except NotFound``), and ``code`` (stable, machine-readable) for everything finer.
"""

from __future__ import annotations

from typing import Any


class ClientError(Exception):
    """Base of everything this client raises on purpose."""


class ConfigError(ClientError):
    """The client was not told where the API is or which key to use."""


class ConnectionFailed(ClientError):
    """The API could not be reached (refused, reset, timed out) even after the retries."""


class ApiError(ClientError):
    """An answer >= 400: ``status``, ``code`` and ``detail`` from the problem JSON (``problem``: all of it)."""

    def __init__(self, status: int, code: str, detail: str, problem: dict[str, Any] | None = None) -> None:
        super().__init__(f"[{code}] {detail} (HTTP {status})")
        self.status, self.code, self.detail = status, code, detail
        self.problem: dict[str, Any] = problem or {"status": status, "code": code, "detail": detail}


class Unauthorized(ApiError):
    """401: the key is missing, wrong or revoked."""


class NotFound(ApiError):
    """404: no such resource (or another tenant's: the API answers the same)."""


class Conflict(ApiError):
    """409: an Idempotency-Key reused for another request, or a video that is not ready yet."""


class TooLarge(ApiError):
    """413: the file is over the API's size limit."""


class Invalid(ApiError):
    """415/422: an invalid request or unusable media (``code`` says which, e.g. ``no_audio_stream``)."""


class RateLimited(ApiError):
    """429 after the retries: ``retry_after`` seconds until the window ends."""

    retry_after: float | None = None


class ServerError(ApiError):
    """5xx after the retries."""


_BY_STATUS: dict[int, type[ApiError]] = {
    401: Unauthorized, 404: NotFound, 409: Conflict, 413: TooLarge, 415: Invalid, 422: Invalid, 429: RateLimited,
}  # fmt: skip


def error_from(status: int, body: Any, headers: Any = None) -> ApiError:
    """The typed error for an answer; a body that is not problem JSON still gives a useful message."""
    problem = body if isinstance(body, dict) else {}
    code = str(problem.get("code") or f"http_{status}")
    detail = str(problem.get("detail") or problem.get("title") or (body if isinstance(body, str) else "")
                 or f"The API answered HTTP {status}.")  # fmt: skip
    cls = _BY_STATUS.get(status) or (ServerError if status >= 500 else ApiError)
    err = cls(status, code, detail[:2000], problem or None)
    if isinstance(err, RateLimited) and headers is not None:
        err.retry_after = parse_retry_after(headers.get("retry-after"))
    return err


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds (the API sends seconds; an HTTP date is read too)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    from email.utils import parsedate_to_datetime
    from time import time

    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time())
    except (TypeError, ValueError):
        return None
