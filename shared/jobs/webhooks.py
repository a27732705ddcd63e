"""Webhooks (API.md "Live progress and notifications"), sent the Standard Webhooks way
(https://www.standardwebhooks.com/): each job state change becomes one ``WebhookDelivery`` per matching
webhook, in the same transaction as its event (``fan_out``); a maintenance loop POSTs the due ones
(``deliver_due``), signed, and retries failures with backoff until ``RETRY_SCHEDULE_S`` runs out.

Delivery is at least once: a receiver deduplicates on the ``webhook-id`` header (the delivery's id,
the same on every retry). Redirects are never followed.

Receivers must be on public addresses (SSRF, shared/net/addresses.py): a URL is checked when it is
registered and again at every delivery, after DNS, and a delivery connects to the very address it
checked. Loopback, private and link-local receivers are allowed only with the setting
``webhook_allow_private`` (local receivers, tests); cloud metadata addresses never are.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
import secrets
import ssl
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import SplitResult, urlsplit

import httpx
from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session

from shared.db.models import Event, Webhook, WebhookDelivery, utcnow
from shared.db.states import JobKind, JobState
from shared.jobs.views import rfc3339
from shared.net import addresses
from shared.settings import get_settings

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
RESOLVE_TIMEOUT_S = 3.0  # longest wait for DNS, at registration (a request waits) and at delivery
MAX_ADDRESSES = 3  # of a receiver's checked addresses, tried in turn when a connection fails


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


def check_url(url: str, *, allow_private: bool = False) -> str:
    """An http(s) URL with a host and no credentials, at most ``MAX_URL`` characters, whose host is not
    a forbidden address written out (``http://10.0.0.1/``, ``http://[::1]/``) or a cloud metadata name.
    Names are looked up by ``check_url_addresses`` (registration) and at each delivery."""
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
    if addresses.is_metadata_name(parts.hostname):
        raise ValueError(_refused_sentence(parts.hostname, None, "a cloud metadata service"))
    ip = addresses.literal(parts.hostname)
    if ip is not None:
        _check_addresses(parts.hostname, [ip], allow_private)
    return url


def _refused_sentence(host: str, ip: addresses.IPAddress | None, why: str) -> str:
    if ip is None or str(ip) == host.strip("[]"):
        where = f"{host} is {why}"
    else:
        where = f"{host} resolves to {ip}, {why}"
    return f"The url's host {where}; webhooks must be sent to a public address."


def _check_addresses(host: str, found: list[addresses.IPAddress], allow_private: bool) -> None:
    """ValueError when any address of ``host`` is refused: a name with one private address among public
    ones could be made to connect there."""
    for ip in found:
        why = addresses.refusal(ip, allow_private=allow_private)
        if why:
            raise ValueError(_refused_sentence(host, ip, why))


async def check_url_addresses(
    url: str, *, allow_private: bool = False, timeout_s: float = RESOLVE_TIMEOUT_S
) -> None:
    """At registration, for a url ``check_url`` accepted: ValueError when its host name resolves to a
    refused address. A name that does not resolve, or not within ``timeout_s``, is accepted: a receiver
    whose DNS is not set up yet may be registered, and every delivery looks the name up and checks it
    again (nothing is sent to a refused address)."""
    parts = urlsplit(url)
    try:
        found = await addresses.resolve_async(parts.hostname, _port(parts), timeout_s)
    except (LookupError, TimeoutError):
        return
    _check_addresses(parts.hostname, found, allow_private)


def _port(parts: SplitResult) -> int:
    return parts.port or (443 if parts.scheme == "https" else 80)


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


class _Refused(Exception):
    """A delivery not attempted: the receiver's address is refused, or its name does not resolve."""


def _checked_targets(url: str, allow_private: bool) -> list[addresses.IPAddress]:
    """The addresses to connect to for ``url``: its host looked up once, every address checked."""
    try:
        check_url(url, allow_private=allow_private)
        parts = urlsplit(url)
        found = addresses.resolve(parts.hostname, _port(parts), RESOLVE_TIMEOUT_S)
        _check_addresses(parts.hostname, found, allow_private)
    except (ValueError, LookupError, TimeoutError) as exc:
        raise _Refused(str(exc)) from exc
    return found[:MAX_ADDRESSES]


def _request_at(url: str, ip: addresses.IPAddress) -> tuple[httpx.URL, dict[str, str], dict]:
    """The URL with its host replaced by ``ip``, the ``Host`` header the receiver expects, and for https
    the name to send as SNI and to verify the certificate against (httpx's ``sni_hostname``)."""
    parts = urlsplit(url)
    extensions = {}
    if parts.scheme == "https" and addresses.literal(parts.hostname) is None:
        extensions["sni_hostname"] = parts.hostname
    return httpx.URL(url).copy_with(host=str(ip)), {"host": parts.netloc}, extensions


def _send(client: httpx.Client, job: _Job, allow_private: bool) -> tuple[int | None, str | None]:
    """POST one delivery; (status code, error). The host is looked up and checked here, then the POST
    goes to a checked address (the next one when a connection fails). Only the status line and headers
    are awaited."""
    try:
        targets = _checked_targets(job.url, allow_private)
    except _Refused as exc:
        return None, f"not sent: {exc}"[:500]
    timestamp = int(time.time())
    headers = {
        "content-type": "application/json",
        "webhook-id": job.delivery_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(job.secret, job.delivery_id, timestamp, job.body),
        "user-agent": "synctalk-webhooks/1",
    }
    error = "no address to connect to"
    for ip in targets:
        url, host, extensions = _request_at(job.url, ip)
        try:
            with client.stream(
                "POST", url, content=job.body, headers={**headers, **host}, extensions=extensions
            ) as response:
                code = response.status_code
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            error = f"{type(exc).__name__}: {exc} ({ip})"[:500]
            continue  # the name's next address
        except httpx.TimeoutException as exc:
            return None, f"timed out: {type(exc).__name__}"
        except httpx.HTTPError as exc:
            return None, f"{type(exc).__name__}: {exc}"[:500]
        return code, None if 200 <= code < 300 else f"HTTP {code}"
    return None, error


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
    engine: Engine,
    *,
    now: datetime | None = None,
    timeout_s: float = 10,
    max_batch: int = 50,
    allow_private: bool | None = None,
    verify: ssl.SSLContext | bool = True,
) -> int:
    """Send the pending deliveries whose time has come; returns how many were attempted. A 2xx marks a
    delivery delivered; anything else (a status, a timeout, a refused connection, a receiver address
    that is refused) schedules a retry by ``RETRY_SCHEDULE_S`` (with jitter), or marks it failed once
    the schedule is spent. ``allow_private``: receivers on loopback and private addresses are allowed
    (None: the setting ``webhook_allow_private``). ``verify``: how https receivers are verified."""
    if allow_private is None:
        allow_private = get_settings().webhook_allow_private
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

    def send_all(queue: list[_Job]) -> None:
        # a client per endpoint: connections are made to addresses, so a pooled one must never carry
        # another host name's request (its certificate was verified for the first name only)
        with httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False, verify=verify) as client:
            for job in queue:
                code, error = _send(client, job, allow_private)
                # retries count from the attempt's end (or from the caller's clock, when it gave one)
                _record(engine, job, code, error, utcnow() if now is None else now)

    with ThreadPoolExecutor(max_workers=min(threads, len(by_hook))) as pool:
        list(pool.map(send_all, by_hook.values()))
    return len(jobs)
