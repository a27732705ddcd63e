"""Creating a job-like resource from a request: a multipart file or a JSON ``upload_id``, checked by the
media layer, under the request's ``Idempotency-Key``; answered 202 with the resource and a Location.

The blocking parts (saving, probing, storing, the database) run in the thread pool, so one slow upload
never holds up the event loop that serves everyone else.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from fastapi import Request, Response
from pydantic import BaseModel, ValidationError
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.types import Message

from services.api.idempotency import Idempotency, request_hash
from services.api.intake import checked_upload, store_direct
from services.api.problems import ApiProblem
from shared.db.models import Upload

FORM_LIMITS = {"max_files": 1, "max_fields": 20}


def _file_digest(part: UploadFile) -> str:
    h = hashlib.sha256()
    part.file.seek(0)
    while chunk := part.file.read(1 << 20):
        h.update(chunk)
    part.file.seek(0)
    return h.hexdigest()


async def read_fields(
    request: Request, model: type[BaseModel], file_field: str
) -> tuple[dict, UploadFile | None]:
    """(validated fields, the file part or None) from a multipart form or a JSON body."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        size = request.headers.get("content-length")
        limit = request.app.state.platform.settings.direct_upload_max_bytes
        if size and size.isdigit() and int(size) > limit + (1 << 20):
            raise ApiProblem(
                413, "file_too_large",
                f"Direct uploads are limited to {limit / 1e6:.0f} MB; use POST /v1/uploads for larger files.",
            )  # fmt: skip
        form = await bounded(request, limit + (1 << 20)).form(**FORM_LIMITS)
        part = form.get(file_field)
        if not isinstance(part, UploadFile):
            raise ApiProblem(422, "invalid_request", f"The form needs a file part named {file_field!r}.")
        fields = {k: v for k, v in form.items() if k != file_field and isinstance(v, str)}
        fields.pop("upload_id", None)
        return _validate(model, {**fields, "upload_id": "direct"}), part
    try:
        body = await request.json()
    except ValueError:
        raise ApiProblem(
            422,
            "invalid_request",
            f"Send JSON with an upload_id, or multipart/form-data with a {file_field!r} file.",
        ) from None
    if not isinstance(body, dict):
        raise ApiProblem(422, "invalid_request", "The JSON body must be an object.")
    return _validate(model, body), None


def openapi_body(model: type[BaseModel], file_field: str) -> dict:
    """The OpenAPI request body of a create that reads its request itself (FastAPI cannot see it): JSON
    ``model``, or multipart with a ``file_field`` part and the model's other fields as form fields."""
    schema = model.model_json_schema()
    form = {k: v for k, v in schema["properties"].items() if k != "upload_id"}
    multipart = {
        "type": "object",
        "required": [file_field],
        "properties": {file_field: {"type": "string", "format": "binary"}, **form},
    }
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": schema}, "multipart/form-data": {"schema": multipart}},
        }
    }


def bounded(request: Request, max_bytes: int) -> Request:
    """The request with its body cut off at ``max_bytes``: 413 once more arrives. Content-Length is
    checked before reading, but a chunked body announces no length, and a form's files are spooled to
    disk as they come: this bounds them whatever the client says."""
    received = 0

    async def receive() -> Message:
        nonlocal received
        message = await request.receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > max_bytes:
                raise ApiProblem(
                    413, "file_too_large", f"The request body is larger than {max_bytes / 1e6:.0f} MB."
                )
        return message

    return Request(request.scope, receive)


def _validate(model: type[BaseModel], data: dict) -> dict:
    try:
        return model(**data).model_dump()
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise ApiProblem(422, "invalid_request", f"{where}: {first.get('msg')}") from None


async def create_from_request(
    request: Request, platform, session, tenant, *, kind: str, file_field: str, model: type[BaseModel],
    build: Callable[[dict, object, Idempotency], tuple[dict, str]],
) -> Response:  # fmt: skip
    """``build(fields, upload, idem) -> (resource JSON, location)`` creates the resource (committed with
    the request's idempotency key; what follows the commit goes to ``idem.after_commit``)."""
    fields, part = await read_fields(request, model, file_field)
    file_digest = await run_in_threadpool(_file_digest, part) if part is not None else ""
    digest = request_hash(request.method, request.url.path, repr(sorted(fields.items())), file_digest)
    idem = Idempotency(session, tenant.id, request.headers.get("idempotency-key"))
    stored: list[str] = []  # the storage key of a direct upload, once its file is stored

    def work() -> tuple[dict, str]:
        if part is not None:
            upload = store_direct(platform, session, tenant.id, part, kind)
            stored.append(upload.storage_key)
        else:
            upload = checked_upload(platform, session, tenant.id, fields["upload_id"], kind)
        return build(fields, upload, idem)

    def drop_stored() -> None:  # refused after the file was stored (e.g. a bad field): no row names it
        if stored:
            _drop_unrecorded(platform, stored[0])

    return await idem.run(digest, work, status=202, on_error=drop_stored)


def _drop_unrecorded(platform, storage_key: str) -> None:
    """Delete a direct upload's stored file unless its row was committed (the request failed after)."""
    with platform.sessions() as s:
        if s.scalar(select(Upload.id).where(Upload.storage_key == storage_key)) is None:
            platform.storage.delete(storage_key)
