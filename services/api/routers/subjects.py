"""``/v1/subjects``: a person, learned from a video (API.md "Subjects")."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy import select

from services.api import resources
from services.api.deps import CurrentTenant, PlatformDep, SessionDep
from services.api.intake import VIDEO
from services.api.pagination import Cursor, Limit, StatusFilter, next_cursor, page
from services.api.problems import ApiProblem
from shared.db.models import Render, Subject, WorkerInfo, utcnow
from shared.db.session import tenant_scoped
from shared.db.states import JobKind
from shared.jobs import deletions, lifecycle

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/subjects", tags=["subjects"])
PROFILES = ("tiny", "preview", "standard")


class SubjectCreate(BaseModel):
    """JSON body of ``POST /v1/subjects`` (or the same fields as form fields beside a ``video`` file)."""

    upload_id: str = Field(description="A finished upload (POST /v1/uploads, then PUT the file).")
    name: str | None = Field(default=None, max_length=200)
    profile: str | None = Field(default=None, description="tiny | preview | standard")


GPU_SEEN_WITHIN = timedelta(days=7)
# folders deleted within a DELETE request (the subject's first, then its renders'); a subject with more
# renders answers without waiting for them all: the scheduler deletes the rest on its next passes
PURGE_NOW = 100


def default_profile(session, settings, *, now: datetime | None = None) -> str:
    """The profile of a subject created without one: the setting when set; else ``standard`` when a
    worker serving the gpu queue reported a CUDA GPU within a week (the API's own machine says nothing:
    on the real stack it has no GPU, the workers do), else ``preview`` (what a CPU trains in minutes)."""
    if settings.default_profile:
        return settings.default_profile
    return "standard" if _gpu_worker_seen(session, now or utcnow()) else "preview"


def _gpu_worker_seen(session, now: datetime) -> bool:
    rows = session.execute(
        select(WorkerInfo.queues, WorkerInfo.accelerator).where(WorkerInfo.seen_at >= now - GPU_SEEN_WITHIN)
    )
    return any(
        "gpu" in {q.strip() for q in queues.split(",")} and (accelerator or "").lower().startswith("cuda")
        for queues, accelerator in rows
    )


def _profile(value: str | None, session, settings) -> str:
    profile = value or default_profile(session, settings)
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
        build=lambda fields, upload, idem: _new_subject(platform, session, tenant, fields, upload, idem),
    )  # fmt: skip


def _new_subject(platform, session, tenant, fields: dict, upload, idem) -> tuple[dict, str]:
    name = (fields.get("name") or upload.filename.rsplit(".", 1)[0] or "subject")[:200]
    subject, nxt = lifecycle.create_subject(
        session, tenant.id, name=name, profile=_profile(fields.get("profile"), session, platform.settings),
        upload_id=upload.id, source_key=None,
    )  # fmt: skip
    idem.after_commit(lambda: platform.send(nxt))
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
    return {"items": lifecycle.views(session, JobKind.subject, rows), "next_cursor": nxt}


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
    """Cancels its jobs, deletes its rows and records every stored file of it (its folder, its renders',
    the uploads nothing else uses) in one transaction; then deletes those files. What storage refuses
    now stays recorded, and the scheduler deletes it later (shared/jobs/deletions.py)."""
    subject = get_owned(session, tenant.id, subject_id)
    render_ids = list(session.scalars(select(Render.id).where(Render.subject_id == subject.id)))
    for render_id in render_ids:
        lifecycle.request_cancel(session, JobKind.render, render_id)
    lifecycle.request_cancel(session, JobKind.subject, subject.id)
    recorded = deletions.record_subject_deletion(session, tenant.id, subject.id)
    session.commit()
    try:
        ids = [d.id for d in recorded]
        deletions.purge_due(platform.sessions, platform.storage, ids=ids, limit=PURGE_NOW)
    except Exception:  # noqa: BLE001 -- the rows are committed: the scheduler purges them, the request is done
        log.warning("deleting the files of subject %s is left to the scheduler", subject_id, exc_info=True)
    return Response(status_code=204)
