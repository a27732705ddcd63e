"""``/v1/subjects``: a person, learned from a video (API.md "Subjects")."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy import select

from services.api import resources
from services.api.deps import CurrentTenant, PlatformDep, SessionDep
from services.api.intake import VIDEO
from services.api.pagination import Cursor, Limit, StatusFilter, next_cursor, page
from services.api.problems import ApiProblem
from shared.db.models import Render, Subject
from shared.db.session import tenant_scoped
from shared.db.states import JobKind
from shared.jobs import keys, lifecycle

router = APIRouter(prefix="/v1/subjects", tags=["subjects"])
PROFILES = ("tiny", "preview", "standard")


class SubjectCreate(BaseModel):
    """JSON body of ``POST /v1/subjects`` (or the same fields as form fields beside a ``video`` file)."""

    upload_id: str = Field(description="A finished upload (POST /v1/uploads, then PUT the file).")
    name: str | None = Field(default=None, max_length=200)
    profile: str | None = Field(default=None, description="tiny | preview | standard")


def default_profile(settings) -> str:
    if settings.default_profile:
        return settings.default_profile
    try:
        import torch

        return "standard" if torch.cuda.is_available() else "preview"
    except ImportError:
        return "preview"


def _profile(value: str | None, settings) -> str:
    profile = value or default_profile(settings)
    if profile not in PROFILES:
        raise ApiProblem(
            422, "invalid_request", f"profile must be one of {', '.join(PROFILES)}, got {profile!r}."
        )
    return profile


@router.post(
    "",
    status_code=202,
    summary="Learn a person from a video",
    openapi_extra=resources.openapi_body(SubjectCreate, "video"),
)
async def create_subject(
    request: Request, platform: PlatformDep, session: SessionDep, tenant: CurrentTenant
) -> Response:
    """``multipart/form-data`` with a ``video`` file part (small files), or JSON ``{"upload_id"}``;
    optional ``name`` and ``profile``. The video is probed before anything is queued."""
    return await resources.create_from_request(
        request, platform, session, tenant, kind=VIDEO, file_field="video", model=SubjectCreate,
        build=lambda fields, upload: _new_subject(platform, session, tenant, fields, upload),
    )  # fmt: skip


def _new_subject(platform, session, tenant, fields: dict, upload) -> tuple[dict, str]:
    name = (fields.get("name") or upload.filename.rsplit(".", 1)[0] or "subject")[:200]
    subject, nxt = lifecycle.create_subject(
        session, tenant.id, name=name, profile=_profile(fields.get("profile"), platform.settings),
        upload_id=upload.id, source_key=None,
    )  # fmt: skip
    session.commit()
    platform.send(nxt)
    return lifecycle.view(session, JobKind.subject, subject), f"/v1/subjects/{subject.id}"


def get_owned(session, tenant_id: str, subject_id: str) -> Subject:
    row = session.scalars(tenant_scoped(Subject, tenant_id).where(Subject.id == subject_id)).first()
    if row is None:
        raise ApiProblem(404, "not_found", f"There is no subject {subject_id!r}.")
    return row


@router.get("/{subject_id}", summary="A subject, its stages, dataset report and metrics")
def read_subject(subject_id: str, session: SessionDep, tenant: CurrentTenant) -> dict:
    return lifecycle.view(session, JobKind.subject, get_owned(session, tenant.id, subject_id))


@router.get("", summary="The tenant's subjects, newest first")
def list_subjects(
    session: SessionDep,
    tenant: CurrentTenant,
    limit: Limit = 50,
    cursor: Cursor = None,
    status: StatusFilter = None,
) -> dict:
    stmt = tenant_scoped(Subject, tenant.id)
    if status:
        stmt = stmt.where(Subject.status == status)
    rows, nxt = next_cursor(list(session.scalars(page(stmt, Subject, limit, cursor))), limit)
    return {"items": [lifecycle.view(session, JobKind.subject, r) for r in rows], "next_cursor": nxt}


@router.post("/{subject_id}/cancel", status_code=202, summary="Cancel a subject's training")
def cancel_subject(
    subject_id: str, platform: PlatformDep, session: SessionDep, tenant: CurrentTenant
) -> JSONResponse:
    get_owned(session, tenant.id, subject_id)
    lifecycle.request_cancel(session, JobKind.subject, subject_id)
    session.commit()
    body = lifecycle.view(session, JobKind.subject, get_owned(session, tenant.id, subject_id))
    return JSONResponse(body, status_code=202)


@router.delete("/{subject_id}", status_code=204, summary="Delete a subject, its renders and their files")
def delete_subject(
    subject_id: str, platform: PlatformDep, session: SessionDep, tenant: CurrentTenant
) -> Response:
    subject = get_owned(session, tenant.id, subject_id)
    render_ids = list(session.scalars(select(Render.id).where(Render.subject_id == subject.id)))
    for render_id in render_ids:
        lifecycle.request_cancel(session, JobKind.render, render_id)
    lifecycle.request_cancel(session, JobKind.subject, subject.id)
    session.delete(subject)  # its renders, stages and batches go with it (foreign keys)
    session.commit()
    platform.storage.delete_prefix(keys.subject_prefix(tenant.id, subject_id))
    for render_id in render_ids:
        platform.storage.delete_prefix(keys.render_prefix(tenant.id, render_id))
    return Response(status_code=204)
