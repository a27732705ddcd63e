"""Additions to v1 for following a job closely (docs/API_NOTES.md "Dashboard additions"): a subject's
training curves and dataset report pictures, and a retry of a failed or canceled render.

Everything is read through the tenant's own subject or render row first, so another tenant's id
answers exactly like a missing one (404), before any storage key is even formed.
"""

from __future__ import annotations

import json

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from gpu_worker.preprocess.report_files import REPORT_IMAGES, curves_key, report_image_key
from services.api.deps import CurrentTenant, PlatformDep, SessionDep
from services.api.idempotency import Idempotency, request_hash
from services.api.problems import ApiProblem
from services.api.routers.renders import get_owned as get_render
from services.api.routers.subjects import get_owned as get_subject
from shared.db.states import JobKind
from shared.jobs import lifecycle

router = APIRouter(tags=["subjects"])
RETRYABLE = ("failed", "canceled")


@router.get("/v1/subjects/{subject_id}/curves", summary="A subject's training curves (loss and PSNR)")
def read_curves(subject_id: str, platform: PlatformDep, session: SessionDep, tenant: CurrentTenant) -> dict:
    """``points``: ``{"stage", "step", "loss", "psnr"}`` as training reports them (every few steps,
    published every couple of seconds while it trains); empty before training starts."""
    subject = get_subject(session, tenant.id, subject_id)
    key = curves_key(tenant.id, subject.id)
    doc: dict = {"points": [], "total_steps": 0}
    if platform.storage.exists(key):
        doc = json.loads(platform.storage.read_bytes(key))
    return {
        "object": "training_curves",
        "subject_id": subject.id,
        "status": subject.status,
        "points": doc.get("points", []),
        "total_steps": doc.get("total_steps", 0),
    }


@router.get("/v1/subjects/{subject_id}/report/images", summary="The dataset report's pictures")
def list_report_images(
    subject_id: str, platform: PlatformDep, session: SessionDep, tenant: CurrentTenant
) -> dict:
    """The pictures drawn after preprocessing (none before): name, caption, type and address."""
    subject = get_subject(session, tenant.id, subject_id)
    items = [
        {
            "name": name,
            "caption": caption,
            "content_type": content_type,
            "url": f"/v1/subjects/{subject.id}/report/images/{name}",
        }
        for name, (content_type, caption) in REPORT_IMAGES.items()
        if platform.storage.exists(report_image_key(tenant.id, subject.id, name))
    ]
    return {"items": items, "next_cursor": None}


@router.get(
    "/v1/subjects/{subject_id}/report/images/{name}",
    summary="One picture of the dataset report",
    responses={200: {"content": {"image/jpeg": {}, "image/png": {}}}},
)
def read_report_image(
    subject_id: str, name: str, platform: PlatformDep, session: SessionDep, tenant: CurrentTenant
) -> Response:
    subject = get_subject(session, tenant.id, subject_id)
    if name not in REPORT_IMAGES:
        raise ApiProblem(
            404, "not_found", f"There is no report picture {name!r}; see GET .../report/images for the list."
        )
    key = report_image_key(tenant.id, subject.id, name)
    if not platform.storage.exists(key):
        raise ApiProblem(
            404,
            "not_found",
            f"Subject {subject.id} has no {name} yet: pictures are drawn after preprocessing.",
        )
    # small files (tens of kB): read whole, cached by the browser for a while (they never change)
    body = platform.storage.read_bytes(key)
    headers = {"Cache-Control": "private, max-age=300"}
    return Response(body, media_type=REPORT_IMAGES[name][0], headers=headers)


@router.post("/v1/renders/{render_id}/retry", status_code=202, summary="Render the same speech again")
async def retry_render(
    render_id: str, request: Request, platform: PlatformDep, session: SessionDep, tenant: CurrentTenant
) -> Response:
    """A failed or canceled render: a new render of the same speech, subject, mode, start frame and captions
    (202, the new render, ``Location``; ``retry_of`` names the original). 409 ``not_retryable`` for a
    render still running or already succeeded."""
    original = await run_in_threadpool(get_render, session, tenant.id, render_id)  # never on the loop
    digest = request_hash(request.method, request.url.path)
    idem = Idempotency(session, tenant.id, request.headers.get("idempotency-key"))

    def work() -> tuple[dict, str]:
        if original.status not in RETRYABLE:
            raise ApiProblem(
                409, "not_retryable",
                f"Render {original.id} is {original.status}; only failed or canceled renders can be retried.",
            )  # fmt: skip
        if not original.audio_key or not platform.storage.exists(original.audio_key):
            raise ApiProblem(
                409, "audio_gone", f"The speech of render {original.id} is no longer stored; upload it again."
            )
        subject = get_subject(session, tenant.id, original.subject_id)
        render, nxt = lifecycle.create_render(
            session, tenant.id, subject, mode=original.mode, start_frame=original.start_frame,
            ref=original.ref, upload_id=original.upload_id, audio_key=original.audio_key,
            captions=original.captions or "on", language=original.language,
        )  # fmt: skip
        idem.after_commit(lambda: platform.send(nxt))
        body = {**lifecycle.view(session, JobKind.render, render, platform.base_url), "retry_of": original.id}
        return body, f"/v1/renders/{render.id}"

    return await idem.run(digest, work, status=202)
