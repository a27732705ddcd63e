"""``/v1/batches``: many renders of one subject in one call (API.md "Batches")."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy import func, select

from services.api.deps import CurrentTenant, PlatformDep, SessionDep
from services.api.idempotency import Idempotency, request_hash
from services.api.intake import AUDIO, checked_uploads
from services.api.problems import ApiProblem
from services.api.routers.renders import check_captions, check_mode
from services.api.routers.subjects import get_owned as get_subject
from shared.db.models import Batch, Render, new_id, utcnow
from shared.db.session import tenant_scoped
from shared.db.states import JobState
from shared.errors import SyncTalkError
from shared.jobs import lifecycle, webhooks
from shared.jobs.views import rfc3339

router = APIRouter(prefix="/v1/batches", tags=["batches"])
MAX_ITEMS = 1000


class BatchItem(BaseModel):
    upload_id: str
    ref: str | None = Field(default=None, max_length=500, description="Your own name for the render.")
    mode: str = Field(default="fullframe", description="fullframe | portrait | crop")
    start_frame: int = Field(default=0, ge=0)
    language: str | None = Field(default=None, max_length=8, description="A Whisper code; default: detected.")
    captions: str = Field(default="on", description="on | off | burn")


class BatchCreate(BaseModel):
    subject_id: str
    items: list[BatchItem] = Field(min_length=1, max_length=MAX_ITEMS)


@router.post("", status_code=202, summary="Create up to 1000 renders of one subject in one transaction")
async def create_batch(
    body: BatchCreate, request: Request, platform: PlatformDep, session: SessionDep, tenant: CurrentTenant
) -> JSONResponse:
    digest = request_hash("POST", request.url.path, body.model_dump_json())
    idem = Idempotency(session, tenant.id, request.headers.get("idempotency-key"))

    def work() -> tuple[dict, str]:
        subject = get_subject(session, tenant.id, body.subject_id)
        # every item is checked before anything is written (checking uploads commits their verdicts):
        # one bad item refuses the whole batch, and nothing is created
        checked = checked_uploads(platform, session, tenant.id, [i.upload_id for i in body.items], AUDIO)
        uploads = []
        for i, item in enumerate(body.items):
            try:
                upload = checked[item.upload_id]
                if isinstance(upload, Exception):
                    raise upload
                uploads.append(upload)
                check_mode(item.mode)
                check_captions(item.captions, item.language)
            except ApiProblem as exc:  # say which item
                raise ApiProblem(exc.status, exc.code, f"items[{i}]: {exc.detail}") from None
            except SyncTalkError as exc:  # the media layer's verdict on the item's file
                exc.message = f"items[{i}]: {exc.message}"
                exc.args = (exc.message,)
                raise
        batch = Batch(id=new_id(), tenant_id=tenant.id, subject_id=subject.id)
        session.add(batch)
        hooks = webhooks.subscriptions(session, tenant.id)
        out, nxt = [], []
        for item, upload in zip(body.items, uploads, strict=True):  # no query per item: one INSERT per table
            captions, language = check_captions(item.captions, item.language)
            render, more = lifecycle.create_render(
                session, tenant.id, subject, mode=item.mode, start_frame=item.start_frame, ref=item.ref,
                upload_id=upload.id, audio_key=upload.storage_key, batch_id=batch.id, hooks=hooks,
                captions=captions, language=language,
            )  # fmt: skip
            out.append({"id": render.id, "ref": item.ref})
            nxt += more
        idem.after_commit(lambda: platform.send(nxt))
        return {
            "id": batch.id,
            "object": "batch",
            "subject_id": subject.id,
            "renders": out,
        }, f"/v1/batches/{batch.id}"

    return await idem.run(digest, work, status=202)


@router.get("/{batch_id}", summary="A batch: its renders counted by status")
def read_batch(batch_id: str, session: SessionDep, tenant: CurrentTenant) -> dict:
    batch = session.scalars(tenant_scoped(Batch, tenant.id).where(Batch.id == batch_id)).first()
    if batch is None:
        raise ApiProblem(404, "not_found", f"There is no batch {batch_id!r}.")
    counts = dict(
        session.execute(
            select(Render.status, func.count()).where(Render.batch_id == batch.id).group_by(Render.status)
        ).all()
    )
    by_status = {s.value: int(counts.get(s.value, 0)) for s in JobState}
    total = sum(by_status.values())
    finished = sum(by_status[s.value] for s in JobState if s.is_final)
    return {
        "id": batch.id,
        "object": "batch",
        "subject_id": batch.subject_id,
        "created_at": rfc3339(batch.created_at),
        "total": total,
        "counts": by_status,
        "done": total > 0 and finished == total,
        "checked_at": rfc3339(utcnow()),
    }
