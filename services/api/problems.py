"""Errors as ``application/problem+json`` (RFC 9457) with a stable ``code``; never a stack trace.

Typed failures of the stages and the media layer (``SyncTalkError``) keep their codes; HTTP and
validation errors get codes of their own. Every detail is one sentence a person can act on.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from shared.errors import SyncTalkError

log = logging.getLogger(__name__)
PROBLEM = "application/problem+json"
TITLES = {
    400: "Bad request", 401: "Unauthorized", 404: "Not found", 405: "Method not allowed", 409: "Conflict",
    413: "Content too large", 415: "Unsupported media type", 422: "Unprocessable content",
    429: "Too many requests", 500: "Internal server error", 503: "Service unavailable",
}  # fmt: skip
# Typed errors whose status is not 422 (bad input is 422 unless said otherwise).
STATUS_OF_CODE = {
    "media_too_large": 413, "file_too_large": 413, "storage_not_found": 404, "storage_key": 404,
    "storage_signature": 403, "storage_signature_expired": 403,
}  # fmt: skip


# The body of every error, as /openapi.json documents it (FastAPI's own 422 schema is not what we send).
PROBLEM_SCHEMA = {
    "title": "Problem",
    "type": "object",
    "required": ["type", "title", "status", "detail", "code"],
    "properties": {
        "type": {"type": "string", "description": "urn:synctalk:problem:<code>"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string", "description": "One sentence a person can act on."},
        "code": {"type": "string", "description": "Stable and machine-readable: not_found, no_face, ..."},
    },
}


class ApiProblem(Exception):
    """Raise anywhere in a route: it becomes a problem+json response."""

    def __init__(self, status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail, self.headers = status, code, detail, headers or {}


def problem(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    body = {
        "type": f"urn:synctalk:problem:{code}",
        "title": TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
        "code": code,
    }
    return JSONResponse(body, status_code=status, media_type=PROBLEM, headers=headers)


def document(app: FastAPI) -> None:
    """Make /openapi.json say what errors are: FastAPI documents its ``HTTPValidationError`` JSON for 422,
    but every error here is ``application/problem+json`` (the handlers below). Each /v1 operation's 422
    and a ``default`` response (401, 404, 409, 413, 429, ...) name the Problem schema."""
    generate = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is not None:
            return app.openapi_schema
        doc = generate()
        ref = {"$ref": "#/components/schemas/Problem"}
        error = {
            "description": "A problem (RFC 9457) with a stable code",
            "content": {PROBLEM: {"schema": ref}},
        }
        for path, operations in doc.get("paths", {}).items():
            for operation in operations.values():
                responses = operation.setdefault("responses", {})
                if "422" in responses:
                    responses["422"] = {**error, "description": "Invalid request or unusable media"}
                if path.startswith("/v1/"):
                    responses.setdefault("default", error)
        schemas = doc.setdefault("components", {}).setdefault("schemas", {})
        for unused in ("HTTPValidationError", "ValidationError"):
            schemas.pop(unused, None)
        schemas["Problem"] = PROBLEM_SCHEMA
        app.openapi_schema = doc
        return doc

    app.openapi = openapi


def install(app: FastAPI) -> None:
    document(app)

    @app.exception_handler(ApiProblem)
    async def _api_problem(_request: Request, exc: ApiProblem) -> JSONResponse:
        return problem(exc.status, exc.code, exc.detail, exc.headers)

    @app.exception_handler(SyncTalkError)
    async def _typed(_request: Request, exc: SyncTalkError) -> JSONResponse:
        status = STATUS_OF_CODE.get(exc.code, 422)
        if exc.code.startswith("storage") and status == 422:
            status = 503  # the storage backend failed, not the request
        headers = {"Retry-After": "5"} if status == 503 else None
        return problem(status, exc.code, str(exc), headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path"))
        detail = (
            f"{where}: {first.get('msg', 'invalid value')}" if where else first.get("msg", "invalid request")
        )
        return problem(422, "invalid_request", detail)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized"}
        return problem(
            exc.status_code, codes.get(exc.status_code, "http_error"), str(exc.detail), exc.headers
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        from shared.transient import describe, is_transient

        if is_transient(exc):  # the database or the broker is away: a retry later will do
            log.warning(
                "%s %s: a service is unavailable: %s", request.method, request.url.path, describe(exc)
            )
            return problem(
                503, "service_unavailable",
                "A service the platform needs is unavailable for a moment; retry in a few seconds.",
                {"Retry-After": "5"},
            )  # fmt: skip
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem(500, "internal_error", "Something went wrong on our side; the request can be retried.")

    @app.exception_handler(ValueError)
    async def _value_error(request: Request, exc: ValueError) -> JSONResponse:
        if unstorable_text(exc):
            return problem(422, "invalid_request", UNSTORABLE_DETAIL)
        return await _unexpected(request, exc)


UNSTORABLE_DETAIL = "Text in the request cannot contain NUL (0x00) characters or unpaired UTF-16 surrogates."


def unstorable_text(exc: BaseException) -> bool:
    """Whether the database driver refused a text value of the request that no text column can hold: a
    NUL character (PostgreSQL's text types cannot store it; psycopg2 raises ValueError before sending)
    or an unpaired surrogate (JSON's \\ud800 escapes produce them; UTF-8 cannot encode them, so the driver,
    or pydantic serializing the body for the idempotency fingerprint, raises a ValueError that says so).
    Any route that puts a path, query or body value in a query reaches this, so it is answered here,
    once: a 422, not a 500."""
    text = str(exc)
    return isinstance(exc, ValueError) and (
        "cannot contain NUL (0x00) characters" in text or "surrogates not allowed" in text
    )
