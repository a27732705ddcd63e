"""``/v1/renders`` and ``POST /v1/subjects/{id}/renders``: one speech track on one subject."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse, RedirectResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from services.api import resources
from services.api.deps import CurrentTenant, PlatformDep, SessionDep
from services.api.intake import AUDIO
from services.api.pagination import Cursor, Limit, StatusFilter, next_cursor, page
from services.api.problems import ApiProblem
from services.api.routers.subjects import get_owned as get_subject
from shared.db.models import Render
from shared.db.session import tenant_scoped
from shared.db.states import JobKind
from shared.jobs import keys, lifecycle
from shared.languages import CAPTION_MODES, check_language
from shared.storage import NotFoundError

router = APIRouter(tags=["renders"])
MODES = ("fullframe", "portrait", "crop")


class RenderCreate(BaseModel):
    """JSON body of ``POST /v1/subjects/{id}/renders`` (or form fields beside an ``audio`` file)."""

    upload_id: str = Field(description="A finished upload of the speech (any audio file, or a video).")
    mode: str = Field(default="fullframe", description="fullframe | portrait | crop")
    start_frame: int = Field(default=0, ge=0, description="The subject frame (25 fps) the walk starts at.")
    ref: str | None = Field(default=None, max_length=500, description="Your own name for this render.")
    language: str | None = Field(
        default=None,
        max_length=8,
        description="The speech's language, a Whisper code (en, de, ...); default: detected.",
    )
    captions: str = Field(default="on", description="on | off | burn (drawn into the video as well)")


CAPTION_TYPES = {"vtt": "text/vtt; charset=utf-8", "srt": "application/x-subrip; charset=utf-8"}


def check_captions(captions: str | None, language: str | None) -> tuple[str, str | None]:
    """(captions mode, language code or None) as stored, or 422 naming what is wrong."""
    captions = captions or "on"
    if captions not in CAPTION_MODES:
        raise ApiProblem(
            422, "invalid_request", f"captions must be one of {', '.join(CAPTION_MODES)}, got {captions!r}."
        )
    try:
        return captions, check_language(language)
    except ValueError as exc:
        raise ApiProblem(422, "invalid_request", f"{exc}.") from None


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ApiProblem(422, "invalid_request", f"mode must be one of {', '.join(MODES)}, got {mode!r}.")
    return mode


@router.post(
    "/v1/subjects/{subject_id}/renders",
    status_code=202,
    summary="Render a speech track",
    openapi_extra=resources.openapi_body(RenderCreate, "audio"),
)
async def create_render(
    subject_id: str, request: Request, platform: PlatformDep, session: SessionDep, tenant: CurrentTenant
) -> Response:
    """``multipart/form-data`` with an ``audio`` file part, or JSON ``{"upload_id"}``; optional ``mode``,
    ``start_frame``, ``ref``, ``language``, ``captions``. The audio is probed before anything is queued."""
    # the database is never called on the event loop: a blocked loop cannot return pooled connections
    subject = await run_in_threadpool(get_subject, session, tenant.id, subject_id)

    def build(fields: dict, upload, idem) -> tuple[dict, str]:
        captions, language = check_captions(fields.get("captions"), fields.get("language"))
        render, nxt = lifecycle.create_render(
            session, tenant.id, subject, mode=check_mode(fields["mode"]), start_frame=fields["start_frame"],
            ref=fields.get("ref"), upload_id=upload.id, audio_key=upload.storage_key, captions=captions,
            language=language,
        )  # fmt: skip
        idem.after_commit(lambda: platform.send(nxt))
        return lifecycle.view(session, JobKind.render, render, platform.base_url), f"/v1/renders/{render.id}"

    return await resources.create_from_request(
        request, platform, session, tenant, kind=AUDIO, file_field="audio", model=RenderCreate, build=build
    )


def get_owned(session, tenant_id: str, render_id: str) -> Render:
    row = session.scalars(tenant_scoped(Render, tenant_id).where(Render.id == render_id)).first()
    if row is None:
        raise ApiProblem(404, "not_found", f"There is no render {render_id!r}.")
    return row


@router.get("/v1/renders/{render_id}", summary="A render, its QC and its video's address")
def read_render(render_id: str, platform: PlatformDep, session: SessionDep, tenant: CurrentTenant) -> dict:
    return lifecycle.view(
        session, JobKind.render, get_owned(session, tenant.id, render_id), platform.base_url
    )


@router.get("/v1/renders", summary="The tenant's renders, newest first")
def list_renders(
    platform: PlatformDep,
    session: SessionDep,
    tenant: CurrentTenant,
    limit: Limit = 50,
    cursor: Cursor = None,
    subject_id: Annotated[str | None, Query()] = None,
    status: StatusFilter = None,
    batch_id: Annotated[str | None, Query()] = None,
) -> dict:
    stmt = tenant_scoped(Render, tenant.id)
    for column, value in (
        (Render.subject_id, subject_id),
        (Render.status, status),
        (Render.batch_id, batch_id),
    ):
        if value:
            stmt = stmt.where(column == value)
    rows, nxt = next_cursor(list(session.scalars(page(stmt, Render, limit, cursor))), limit)
    items = lifecycle.views(session, JobKind.render, rows, platform.base_url)
    return {"items": items, "next_cursor": nxt}


@router.post("/v1/renders/{render_id}/cancel", status_code=202, summary="Cancel a render")
def cancel_render(
    render_id: str, platform: PlatformDep, session: SessionDep, tenant: CurrentTenant
) -> JSONResponse:
    get_owned(session, tenant.id, render_id)
    lifecycle.request_cancel(session, JobKind.render, render_id)
    session.commit()
    row = get_owned(session, tenant.id, render_id)
    return JSONResponse(lifecycle.view(session, JobKind.render, row, platform.base_url), status_code=202)


@router.get("/v1/renders/{render_id}/video", status_code=307, summary="The finished MP4 (a short-lived link)")
def render_video(
    render_id: str, platform: PlatformDep, session: SessionDep, tenant: CurrentTenant
) -> Response:
    row = get_owned(session, tenant.id, render_id)
    if row.status != "succeeded" or not row.video_key:
        raise ApiProblem(
            409, "not_ready", f"Render {render_id} is {row.status}; its video exists once it succeeded."
        )
    name = f"{row.ref or row.id}.mp4".replace("/", "_")
    signed = platform.storage.presign_get(row.video_key, 900, filename=name)
    return RedirectResponse(signed.url, status_code=307)


@router.get(
    "/v1/renders/{render_id}/captions",
    summary="The render's captions (WebVTT or SubRip)",
    responses={200: {"content": {"text/vtt": {}, "application/x-subrip": {}}}},
)
def render_captions(
    render_id: str,
    platform: PlatformDep,
    session: SessionDep,
    tenant: CurrentTenant,
    format: Annotated[str, Query(description="vtt (WebVTT, the default) or srt (SubRip)")] = "vtt",
) -> Response:
    """The captions of a finished render (409 ``not_ready`` before it succeeded, like ``/video``; 404
    when it has none: made with ``captions: "off"``, or before renders had captions)."""
    if format not in CAPTION_TYPES:
        raise ApiProblem(422, "invalid_request", f"format must be vtt or srt, got {format!r}.")
    row = get_owned(session, tenant.id, render_id)
    if row.status != "succeeded":
        raise ApiProblem(
            409, "not_ready", f"Render {render_id} is {row.status}; its captions exist once it succeeded."
        )
    missing = ApiProblem(404, "not_found", f"Render {render_id} has no captions.")
    if not row.captions_key:
        raise missing
    try:  # one read: no existence check first
        body = platform.storage.read_bytes(keys.captions_key(row.tenant_id, row.id, format))
    except NotFoundError:
        raise missing from None
    name = re.sub(r"[^A-Za-z0-9._-]", "_", f"{row.ref or row.id}.{format}")  # a plain header value
    headers = {"Content-Disposition": f'inline; filename="{name}"', "Cache-Control": "private, max-age=300"}
    return Response(body, media_type=CAPTION_TYPES[format], headers=headers)
