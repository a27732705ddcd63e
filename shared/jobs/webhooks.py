"""Webhooks (API.md "Live progress and notifications"), sent the Standard Webhooks way
(https://www.standardwebhooks.com/): each job state change becomes one ``WebhookDelivery`` per matching
webhook, in the same transaction as its event (``fan_out``); a maintenance loop POSTs the due ones
(``deliver_due``), signed, and retries failures with backoff until ``RETRY_SCHEDULE_S`` runs out.

Delivery is at least once: a receiver deduplicates on the ``webhook-id`` header (the delivery's id,
the same on every retry). Receivers on loopback or private addresses are allowed (the embedded
default and the tests need them); redirects are never followed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
import secrets
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import urlsplit

import httpx
from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session

from shared.db.models import Event, Webhook, WebhookDelivery, utcnow
from shared.db.states import JobKind, JobState
from shared.jobs.views import rfc3339

RESOURCES = tuple(k.value for k in JobKind)
STATES = tuple(s.value for s in JobState)
EVENT_TYPES = frozenset(f"{r}.{s}" for r in RESOURCES for s in STATES)  # what a webhook can receive
# Seconds before retry n (after the first attempt failed, the second, ...): 8 attempts in all over
# about 17 hours, then the delivery is ``failed``. Tests shorten it.
RETRY_SCHEDULE_S: Sequence[float] = (5, 30, 120, 600, 3600, 4 * 3600, 12 * 3600)
JITTER = 0.2  # +-20 %: a receiver that was down is not hit by every retry at the same instant
MAX_URL = 2000
MAX_PATTERNS = 20
SEND_THREADS = 8  # one slow receiver does not hold up everybody else's deliveries


# --- subscriptions ---------------------------------------------------------------------------------
def check_pattern(pattern: str) -> str:
    """A known event type or a pattern with ``*`` for either part; ValueError otherwise."""
    resource, dot, state = pattern.partition(".")
    if pattern == "*" or (dot and resource in (*RESOURCES, "*") and state in (*STATES, "*")):
        return pattern
    if state == "progress":
        raise ValueError(
            f"{pattern!r}: progress events are not sent to webhooks (too many); follow GET /v1/events."
        )
    raise ValueError(
        f"{pattern!r} is not an event type: use subject, render or *, a dot, then queued, running, "
        "succeeded, failed, canceled or * (e.g. render.succeeded, *.failed)."
    )


def check_url(url: str) -> str:
    """An http(s) URL with a host and no credentials, at most ``MAX_URL`` characters."""
    if len(url) > MAX_URL:
        raise ValueError(f"The url is longer than {MAX_URL} characters.")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises ValueError on a malformed port
    except ValueError as exc:
        raise ValueError(f"The url is not valid ({exc}).") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("The url must be http:// or https:// with a host name.")
    if parts.username is not None or parts.password is not None:
        raise ValueError(
            "The url must not contain credentials; deliveries are signed with the secret instead."
        )
    if any(c.isspace() for c in url):
        raise ValueError("The url must not contain spaces.")
    return url


def new_secret() -> str:
    """``whsec_`` + base64 of 32 random bytes (the spec asks for 24 to 64)."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def matches(pattern: str, event_type: str) -> bool:
    """Whether a subscription pattern covers an event type; progress events match nothing."""
    if event_type not in EVENT_TYPES:
        return False
    if pattern == "*":
        return True
    want_r, _, want_s = pattern.partition(".")
    resource, _, state = event_type.partition(".")
    return want_r in ("*", resource) and want_s in ("*", state)


def subscriptions(session: Session, tenant_id: str) -> list[tuple[str, list[str]]]:
    """The tenant's enabled webhooks as (id, event patterns)."""
    rows = session.execute(
        select(Webhook.id, Webhook.events).where(
            Webhook.tenant_id == tenant_id, Webhook.disabled_at.is_(None)
        )
    ).all()
    return [(hook_id, patterns) for hook_id, patterns in rows]


def fan_out(session: Session, event: Event, *, hooks: list[tuple[str, list[str]]] | None = None) -> int:
    """One pending delivery of ``event`` for each of its tenant's enabled webhooks that subscribe to its
    type; returns how many. Runs inside the caller's transaction (``lifecycle.emit``), so deliveries
    exist exactly when their event commits. Calling it twice for one event adds nothing. ``hooks``:
    the tenant's ``subscriptions``, when the caller emits many events (one query instead of many)."""
    if event.type not in EVENT_TYPES:
        return 0  # progress events are never delivered: no query for them
    if hooks is None:
        hooks = subscriptions(session, event.tenant_id)
    wanted = [hook_id for hook_id, patterns in hooks if any(matches(p, event.type) for p in patterns)]
    if not wanted:
        return 0
    fresh = event.id is None  # not yet in the database: it can have no deliveries yet
    session.flush()  # the event's id
    done = (
        set()
        if fresh
        else set(  # by the unique (webhook_id, event_id) index
            session.scalars(
                select(WebhookDelivery.webhook_id).where(
                    WebhookDelivery.webhook_id.in_(wanted), WebhookDelivery.event_id == event.id
                )
            )
        )
    )
    now = utcnow()
    rows = [
        WebhookDelivery(tenant_id=event.tenant_id, webhook_id=h, event_id=event.id, next_attempt_at=now)
        for h in wanted
        if h not in done
    ]
    session.add_all(rows)
    return len(rows)


# --- signing (Standard Webhooks) -------------------------------------------------------------------
def sign(secret: str, msg_id: str, timestamp: int | str, body: bytes | str) -> str:
    """``v1,<base64 HMAC-SHA256>`` of ``{msg_id}.{timestamp}.{body}``, keyed by the secret's bytes."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    payload = body if isinstance(body, bytes) else body.encode()
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + payload, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def payload(event: Event) -> bytes:
    """The body of a delivery: the event's type, time and the resource as the API shows it."""
    doc = {"type": event.type, "timestamp": rfc3339(event.created_at), "data": event.data}
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


# --- delivery ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Job:
    delivery_id: str
    webhook_id: str
    attempts: int
    url: str
    secret: str
    body: bytes


def retry_delay(attempts: int) -> float | None:
    """Seconds until the next try after ``attempts`` failed ones; None when the schedule is spent."""
    if attempts > len(RETRY_SCHEDULE_S):
        return None
    base = RETRY_SCHEDULE_S[attempts - 1]
    return base * (1 + random.uniform(-JITTER, JITTER))


def _claim(engine: Engine, now: datetime, max_batch: int, lease: timedelta) -> list[_Job]:
    """Take up to ``max_batch`` due deliveries by pushing their ``next_attempt_at`` past the lease: a
    second process running this at the same time finds them not due (the conditional UPDATE decides,
    on SQLite and Postgres alike). A process that dies mid-send leaves them due again after the lease."""
    with Session(engine) as s:
        due = s.execute(
            select(
                WebhookDelivery.id, WebhookDelivery.attempts, Webhook.id, Webhook.url, Webhook.secret, Event
            )
            .join(Webhook, Webhook.id == WebhookDelivery.webhook_id)
            .join(Event, Event.id == WebhookDelivery.event_id)
            .where(
                WebhookDelivery.status == "pending",
                WebhookDelivery.next_attempt_at <= now,
                Webhook.disabled_at.is_(None),
            )
            .order_by(WebhookDelivery.next_attempt_at, WebhookDelivery.event_id)
            .limit(max_batch)
        ).all()
        jobs = []
        for delivery_id, attempts, webhook_id, url, secret, event in due:
            taken = s.execute(
                update(WebhookDelivery)
                .where(
                    WebhookDelivery.id == delivery_id,
                    WebhookDelivery.status == "pending",
                    WebhookDelivery.next_attempt_at <= now,
                )
                .values(next_attempt_at=now + lease)
            )
            if taken.rowcount == 1:
                jobs.append(_Job(delivery_id, webhook_id, attempts, url, secret, payload(event)))
        s.commit()
    return jobs


def _send(client: httpx.Client, job: _Job) -> tuple[int | None, str | None]:
    """POST one delivery; (status code, error). Only the status line and headers are awaited."""
    timestamp = int(time.time())
    headers = {
        "content-type": "application/json",
        "webhook-id": job.delivery_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(job.secret, job.delivery_id, timestamp, job.body),
        "user-agent": "synctalk-webhooks/1",
    }
    try:
        with client.stream("POST", job.url, content=job.body, headers=headers) as response:
            code = response.status_code
    except httpx.TimeoutException as exc:
        return None, f"timed out: {type(exc).__name__}"
    except httpx.HTTPError as exc:
        return None, f"{type(exc).__name__}: {exc}"[:500]
    return code, None if 200 <= code < 300 else f"HTTP {code}"


def _record(engine: Engine, job: _Job, code: int | None, error: str | None, now: datetime) -> None:
    attempts = job.attempts + 1
    values: dict = {"attempts": attempts, "last_status_code": code, "last_error": error}
    if error is None:
        values.update(status="delivered", delivered_at=utcnow())
    else:
        delay = retry_delay(attempts)
        if delay is None:
            values["status"] = "failed"
        else:
            values["next_attempt_at"] = now + timedelta(seconds=delay)
    with Session(engine) as s:
        # by id, not through the ORM: a webhook deleted meanwhile took its deliveries with it
        s.execute(update(WebhookDelivery).where(WebhookDelivery.id == job.delivery_id).values(**values))
        s.commit()


def deliver_due(
    engine: Engine, *, now: datetime | None = None, timeout_s: float = 10, max_batch: int = 50
) -> int:
    """Send the pending deliveries whose time has come; returns how many were attempted. A 2xx marks a
    delivery delivered; anything else (a status, a timeout, a refused connection) schedules a retry by
    ``RETRY_SCHEDULE_S`` (with jitter), or marks it failed once the schedule is spent."""
    start = now or utcnow()
    threads = SEND_THREADS
    # long enough for a whole batch to time out (even to one endpoint), then some
    lease = timedelta(seconds=timeout_s * (max_batch + 1) + 30)
    jobs = _claim(engine, start, max_batch, lease)
    if not jobs:
        return 0
    # one endpoint's deliveries go one after another, in event order (a receiver mostly sees events in
    # order, and is never hit by several at once); endpoints are served side by side
    by_hook: dict[str, list[_Job]] = {}
    for job in jobs:
        by_hook.setdefault(job.webhook_id, []).append(job)
    timeout = httpx.Timeout(timeout_s, connect=min(timeout_s, 5.0))
    with httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False) as client:

        def send_all(queue: list[_Job]) -> None:
            for job in queue:
                code, error = _send(client, job)
                # retries count from the attempt's end (or from the caller's clock, when it gave one)
                _record(engine, job, code, error, utcnow() if now is None else now)

        with ThreadPoolExecutor(max_workers=min(threads, len(by_hook))) as pool:
            list(pool.map(send_all, by_hook.values()))
    return len(jobs)
