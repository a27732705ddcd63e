"""``POST /v1/uploads``: a short-lived URL to PUT a large file to (S3 presigned, or the API's own signed
storage route on the embedded default); the file is then named by ``upload_id``."""

from __future__ import annotations

import hashlib
from datetime import timedelta

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile

from services.api.deps import CurrentTenant, Platform, PlatformDep, SessionDep
from services.api.idempotency import Idempotency, request_hash
from services.api.intake import media_type, safe_filename, store_inline
from services.api.problems import ApiProblem
from services.api.resources import bounded
from shared.db.models import Upload, new_id, utcnow
from shared.jobs import keys
from shared.jobs.views import rfc3339

router = APIRouter(prefix="/v1/uploads", tags=["uploads"])


class UploadCreate(BaseModel):
    filename: str = Field(min_length=1, max_length=255)
    content_type: str = Field(
        min_length=1, max_length=100, description="The file's type; sent again with the PUT."
    )
    bytes: int = Field(gt=0, description="The file's exact size.")


MAX_ITEMS = 1000


class UploadBatchCreate(BaseModel):
    items: list[UploadCreate] = Field(min_length=1, max_length=MAX_ITEMS)


def _checked_type(body: UploadCreate, settings) -> str:
    """The item's content type, once its size and type pass (413 / 415 otherwise)."""
    if body.bytes > settings.media_max_bytes:
        raise ApiProblem(
            413,
            "file_too_large",
            f"The file is larger than the {settings.media_max_bytes / 1e9:.1f} GB limit.",
        )
    return media_type(body.content_type)


def _new_upload(
    platform: Platform, tenant_id: str, body: UploadCreate, content_type: str
) -> tuple[Upload, dict]:
    """An upload row (not yet added) and its public form with the signed URL to PUT the file to."""
    expiry = platform.settings.upload_expiry_s
    upload_id = new_id()
    upload = Upload(
        id=upload_id, tenant_id=tenant_id, filename=safe_filename(body.filename), content_type=content_type,
        bytes=body.bytes, storage_key=keys.upload_key(tenant_id, upload_id), status="pending",
        created_at=utcnow(), expires_at=utcnow() + timedelta(seconds=expiry),
    )  # fmt: skip
    signed = platform.storage.presign_put(upload.storage_key, content_type, expiry, max_bytes=body.bytes)
    return upload, {
        "id": upload_id,
        "object": "upload",
        "url": signed.url,
        "method": signed.method,
        "headers": signed.headers,
        "expires_at": rfc3339(signed.expires_at),
    }


@router.post("", status_code=201, summary="Get a URL to upload a large file to")
async def create_upload(
    body: UploadCreate, request: Request, platform: PlatformDep, session: SessionDep, tenant: CurrentTenant
) -> JSONResponse:
    content_type = _checked_type(body, platform.settings)
    digest = request_hash("POST", request.url.path, body.model_dump_json())
    idem = Idempotency(session, tenant.id, request.headers.get("idempotency-key"))

    def work() -> tuple[dict, str]:
        upload, out = _new_upload(platform, tenant.id, body, content_type)
        session.add(upload)
        return out, f"/v1/uploads/{upload.id}"

    return await idem.run(digest, work, status=201)


@router.post("/batch", status_code=201, summary="Get URLs for up to 1000 files in one call (bulk dubbing)")
async def create_uploads(
    body: UploadBatchCreate,
    request: Request,
    platform: PlatformDep,
    session: SessionDep,
    tenant: CurrentTenant,
) -> JSONResponse:
    """Many uploads at once, as ``POST /v1/uploads`` makes one: ``{"items": [{"filename", "content_type",
    "bytes"}, ...]}`` -> 201 ``{"object": "list", "data": [upload, ...]}`` in the items' order. All or
    nothing: one item too large or of the wrong type refuses the call, naming ``items[i]``."""
    types = []
    for i, item in enumerate(body.items):
        try:
            types.append(_checked_type(item, platform.settings))
        except ApiProblem as exc:
            raise ApiProblem(exc.status, exc.code, f"items[{i}]: {exc.detail}") from None
    digest = request_hash("POST", request.url.path, body.model_dump_json())
    idem = Idempotency(session, tenant.id, request.headers.get("idempotency-key"))

    def work() -> tuple[dict, None]:
        made = [_new_upload(platform, tenant.id, item, t) for item, t in zip(body.items, types, strict=True)]
        session.add_all(upload for upload, _ in made)
        return {"object": "list", "data": [out for _, out in made]}, None

    return await idem.run(digest, work, status=201)


INLINE_CALL_MAX = 64 << 20  # bytes in one POST /v1/uploads/files


@router.post(
    "/files",
    status_code=201,
    summary="Send up to 1000 small files in the request itself (short speech tracks in bulk)",
    openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": ["file"],
        "properties": {"file": {"type": "array", "items": {"type": "string", "format": "binary"}}},
    }}}}},
)  # fmt: skip
async def upload_files(
    request: Request, platform: PlatformDep, session: SessionDep, tenant: CurrentTenant
) -> JSONResponse:
    """``multipart/form-data`` with one ``file`` part per file (each at most 16 MB, 64 MB in all): every
    file is checked as a presigned upload is at its first use, then stored; 201 ``{"object": "list",
    "data": [upload, ...]}`` in the parts' order, each ``received`` and ready to name by ``upload_id``.
    All or nothing: one bad file refuses the call, naming ``items[i]``, and nothing is kept. For short
    tracks this saves the PUT per file and the server's read of it that presigned uploads cost."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise ApiProblem(422, "invalid_request", "Send multipart/form-data with one 'file' part per file.")
    size = request.headers.get("content-length")
    if size and size.isdigit() and int(size) > INLINE_CALL_MAX:
        raise ApiProblem(
            413, "file_too_large",
            f"Files sent inline are limited to {INLINE_CALL_MAX >> 20} MB per call; send fewer, or use POST /v1/uploads.",
        )  # fmt: skip
    form = await bounded(request, INLINE_CALL_MAX).form(max_files=MAX_ITEMS, max_fields=MAX_ITEMS)
    try:
        return await _store_files(request, platform, session, tenant, form)
    finally:
        await form.close()  # the spooled parts: deleted now, not when collected


async def _store_files(request: Request, platform: Platform, session, tenant, form: FormData) -> JSONResponse:
    parts = [p for p in form.getlist("file") if isinstance(p, UploadFile)]
    if not parts or len(parts) != len(form.getlist("file")):
        raise ApiProblem(422, "invalid_request", "The form needs one or more file parts named 'file'.")
    digest = request_hash("POST", request.url.path, *await run_in_threadpool(_part_digests, parts))
    idem = Idempotency(session, tenant.id, request.headers.get("idempotency-key"))
    stored: list[str] = []

    def work() -> tuple[dict, None]:
        uploads = store_inline(platform, tenant.id, parts)
        stored.extend({u.storage_key for u in uploads})  # the one object they share
        session.add_all(uploads)
        return {"object": "list", "data": [_public(u) for u in uploads]}, None

    def drop_stored() -> None:  # stored, but the rows were not committed: nothing may name them
        for key in stored:
            platform.storage.delete(key)

    return await idem.run(digest, work, status=201, on_error=drop_stored)


def _part_digests(parts: list[UploadFile]) -> list[str]:
    out = []
    for part in parts:
        h = hashlib.sha256(f"{part.filename}\0{part.content_type}\0".encode())
        part.file.seek(0)
        while chunk := part.file.read(1 << 20):
            h.update(chunk)
        out.append(h.hexdigest())
    return out


def _public(row: Upload) -> dict:
    return {
        "id": row.id,
        "object": "upload",
        "filename": row.filename,
        "content_type": row.content_type,
        "bytes": row.bytes,
        "status": row.status,  # pending (waiting for its PUT) | received (checked) | refused
        "created_at": rfc3339(row.created_at),
        "expires_at": rfc3339(row.expires_at),
    }


@router.get("/{upload_id}", summary="An upload: its size, and whether it was received and checked")
def read_upload(upload_id: str, session: SessionDep, tenant: CurrentTenant) -> dict:
    row = session.scalars(select(Upload).where(Upload.tenant_id == tenant.id, Upload.id == upload_id)).first()
    if row is None:
        raise ApiProblem(404, "not_found", f"There is no upload {upload_id!r}.")
    return _public(row)
