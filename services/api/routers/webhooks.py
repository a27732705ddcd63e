"""``/v1/webhooks``: endpoints that receive the tenant's job state changes, signed the Standard Webhooks
way (shared/jobs/webhooks.py sends them). The signing secret is shown once, in the creation response."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy import func, select

from services.api.deps import CurrentTenant, PlatformDep, SessionDep
from services.api.idempotency import Idempotency, request_hash
from services.api.pagination import Cursor, Limit, next_cursor, page
from services.api.problems import ApiProblem
from shared.db.models import Webhook
from shared.db.session import tenant_scoped
from shared.jobs import webhooks
from shared.jobs.views import rfc3339
from shared.settings import Settings

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])
MAX_PER_TENANT = 50  # every state change is matched against each of the tenant's webhooks


class WebhookCreate(BaseModel):
    url: str = Field(description="Where deliveries are POSTed: http(s), no credentials in it.")
    events: list[str] = Field(
        min_length=1,
        max_length=webhooks.MAX_PATTERNS,
        description="Event types or patterns: subject.succeeded, render.failed, *.failed, render.*, *. "
        "Progress events are not delivered (follow GET /v1/events for them).",
    )


def webhook_view(row: Webhook) -> dict:
    return {
        "id": row.id,
        "object": "webhook",
        "url": row.url,
        "events": row.events,
        "created_at": rfc3339(row.created_at),
        "disabled_at": rfc3339(row.disabled_at),
    }


async def _validated(body: WebhookCreate, settings: Settings) -> tuple[str, list[str]]:
    """The url and the event patterns, or a 422 saying what to fix. The url's host must be a public
    address (shared/jobs/webhooks.py): its name is looked up here, for at most a few seconds, on
    threads of its own; a name that does not resolve is accepted, and every delivery checks again."""
    allow_private = settings.webhook_allow_private
    try:
        url = webhooks.check_url(body.url.strip(), allow_private=allow_private)
        patterns = list(dict.fromkeys(webhooks.check_pattern(p.strip()) for p in body.events))
        await webhooks.check_url_addresses(url, allow_private=allow_private)
    except ValueError as exc:
        raise ApiProblem(422, "invalid_request", str(exc)) from exc
    return url, patterns


@router.post("", status_code=201, summary="Subscribe an endpoint to job state changes")
async def create_webhook(
    body: WebhookCreate, request: Request, platform: PlatformDep, session: SessionDep, tenant: CurrentTenant
) -> JSONResponse:
    """Answers the webhook with its signing ``secret`` (``whsec_...``): it is shown only here. Each
    delivery is a POST of ``{"type", "timestamp", "data"}`` with ``webhook-id``, ``webhook-timestamp``
    and ``webhook-signature`` headers; failed deliveries are retried with backoff for about 17 hours."""
    url, patterns = await _validated(body, platform.settings)
    digest = request_hash("POST", request.url.path, body.model_dump_json())
    idem = Idempotency(session, tenant.id, request.headers.get("idempotency-key"))

    def work() -> tuple[dict, str]:
        count = session.scalar(
            select(func.count()).select_from(Webhook).where(Webhook.tenant_id == tenant.id)
        )
        if count >= MAX_PER_TENANT:
            raise ApiProblem(
                422, "too_many_webhooks", f"A tenant has at most {MAX_PER_TENANT} webhooks; delete one first."
            )
        row = Webhook(tenant_id=tenant.id, url=url, events=patterns, secret=webhooks.new_secret())
        session.add(row)
        session.flush()  # its defaults (created_at)
        return {**webhook_view(row), "secret": row.secret}, f"/v1/webhooks/{row.id}"

    return await idem.run(digest, work, status=201)


def get_owned(session, tenant_id: str, webhook_id: str) -> Webhook:
    row = session.scalars(tenant_scoped(Webhook, tenant_id).where(Webhook.id == webhook_id)).first()
    if row is None:
        raise ApiProblem(404, "not_found", f"There is no webhook {webhook_id!r}.")
    return row


@router.get("", summary="The tenant's webhooks, newest first (without their secrets)")
def list_webhooks(
    session: SessionDep, tenant: CurrentTenant, limit: Limit = 50, cursor: Cursor = None
) -> dict:
    rows, nxt = next_cursor(
        list(session.scalars(page(tenant_scoped(Webhook, tenant.id), Webhook, limit, cursor))), limit
    )
    return {"items": [webhook_view(r) for r in rows], "next_cursor": nxt}


@router.get("/{webhook_id}", summary="One webhook (without its secret)")
def read_webhook(webhook_id: str, session: SessionDep, tenant: CurrentTenant) -> dict:
    return webhook_view(get_owned(session, tenant.id, webhook_id))


@router.delete("/{webhook_id}", status_code=204, summary="Delete a webhook; its pending deliveries stop")
def delete_webhook(webhook_id: str, session: SessionDep, tenant: CurrentTenant) -> Response:
    session.delete(get_owned(session, tenant.id, webhook_id))  # its deliveries go with it (foreign key)
    session.commit()
    return Response(status_code=204)
