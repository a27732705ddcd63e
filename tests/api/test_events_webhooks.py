"""The live event stream (``GET /v1/events``) read over a real socket, ending when its key is revoked;
and webhooks: the API that manages them, deliveries to real HTTP(S) receivers, signed per Standard
Webhooks and checked here with an implementation of the spec of the test's own, and the refusal of
receivers on private and metadata addresses at registration and at delivery."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import queue
import re
import ssl
import threading
import time
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from api_helpers import (
    EventStream,
    Receiver,
    add_key,
    add_tenant,
    events_of,
    fan_out_since,
    free_port,
    make_api,
    new_batch,
    new_render,
    new_subject,
    newest_event_id,
    postgres_url,
    revoke_key,
    run_job,
    served,
)
from sqlalchemy import event as sqlalchemy_event
from sqlalchemy import select, update

from services.api import event_hub
from services.api.routers import events as events_router
from services.dashboard import session
from shared.db.models import Event, Render, Subject, Webhook, WebhookDelivery, utcnow
from shared.jobs import lifecycle, webhooks
from shared.jobs.views import rfc3339
from shared.net import addresses


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request):
    if request.param == "sqlite":
        yield None
    else:
        with postgres_url() as url:
            yield url


@pytest.fixture
def api(tmp_path):
    """The app with one tenant, allowing webhook receivers on loopback (this file's receivers listen on
    127.0.0.1; deliveries are sent with ``allow_private=True`` for the same reason)."""
    made = make_api(tmp_path, webhook_allow_private=True)
    yield made
    made.close()


@pytest.fixture(autouse=True)
def fast_polls(monkeypatch):
    monkeypatch.setattr(events_router, "POLL_S", 0.05)


@contextmanager
def streams(base_url: str):
    """``open(key, params=..., headers=...)`` -> an EventStream, all closed at the end."""
    with ExitStack() as stack:

        def open_(key: str, params: dict | None = None, headers: dict | None = None) -> EventStream:
            stream = EventStream(base_url, key, params, headers)
            stack.callback(stream.close)
            assert stream.status == 200, stream.body
            return stream

        yield open_


def assert_next_is(stream: EventStream, event: Event) -> None:
    """The stream's next message is ``event``: nothing came between (the sentinel check)."""
    got = stream.take(1)[0]
    assert got["id"] == event.id, f"expected event {event.id} ({event.type}), got {got['id']}"


# --- the event stream -------------------------------------------------------------------------------
def test_event_stream_in_order_resumable_filtered_and_per_tenant(tmp_path, database_url):
    api = make_api(tmp_path, database_url)
    platform = api.platform
    other_id, other_key = add_tenant(platform, "someone-else")
    new_subject(platform, api.tenant_id, "before the stream")  # not sent: the stream starts after it
    start = newest_event_id(platform)
    try:
        with served(api.app) as url, streams(url) as open_stream:
            live, theirs = open_stream(api.key), open_stream(other_key)

            ann = new_subject(platform, api.tenant_id, "Ann")
            run_job(platform, "subject", ann)
            batch = new_batch(platform, api.tenant_id, ann)
            in_batch, loose = (
                new_render(platform, api.tenant_id, ann, batch),
                new_render(platform, api.tenant_id, ann),
            )
            run_job(platform, "render", in_batch)
            new_subject(platform, other_id, "Bob")  # the other tenant's
            mine = events_of(platform, api.tenant_id, start)
            assert len(mine) > 10

            got = live.take(len(mine))
            assert [m["id"] for m in got] == [e.id for e in mine]  # in order, with their ids
            assert all(m["event"] == "job" for m in got)
            assert [m["data"] for m in got] == [e.data for e in mine]  # the resource as the API shows it
            assert got[-1]["data"]["status"] == "succeeded" and got[-1]["data"]["id"] == in_batch

            # the other tenant sees its own event only: its sentinel comes right after it
            bobs = events_of(platform, other_id)
            assert_next_is(theirs, bobs[-1])
            new_subject(platform, other_id, "Bob 2")
            assert_next_is(theirs, events_of(platform, other_id)[-1])

            # resuming: exactly the events after Last-Event-ID (header or query), then live ones
            resumed = open_stream(api.key, headers={"Last-Event-ID": str(mine[1].id)})
            assert [m["id"] for m in resumed.take(len(mine) - 2)] == [e.id for e in mine[2:]]
            by_query = open_stream(api.key, params={"last_event_id": str(mine[4].id)})
            assert by_query.take(1)[0]["id"] == mine[5].id

            # filters, replayed from the start: a render, a batch's renders, a subject and its renders
            filtered = {
                "render": open_stream(api.key, {"render_id": in_batch, "last_event_id": start}),
                "batch": open_stream(api.key, {"batch_id": batch, "last_event_id": start}),
                "subject": open_stream(api.key, {"subject_id": ann, "last_event_id": start}),
            }
            expected = {
                "render": [e for e in mine if e.resource_id == in_batch],
                "batch": [e for e in mine if e.resource_id == in_batch],
                "subject": [e for e in mine if e.resource_id in (ann, in_batch, loose)],
            }
            assert len(expected["subject"]) == len(mine) and expected["render"]
            for name, stream in filtered.items():
                assert [m["id"] for m in stream.take(len(expected[name]))] == [e.id for e in expected[name]]

            # a sentinel every stream wants: each one's next message, so nothing was sent in between
            with platform.sessions() as s:
                lifecycle.emit(s, "render", s.get(Render, in_batch), status_changed=False)
                s.commit()
            sentinel = events_of(platform, api.tenant_id)[-1]
            for stream in (live, resumed, *filtered.values()):
                assert_next_is(stream, sentinel)
            assert theirs.messages.empty()
    finally:
        api.close()


def test_stream_keeps_alive_refuses_bad_resumes_and_stops_when_the_client_goes(api, monkeypatch):
    monkeypatch.setattr(events_router, "KEEPALIVE_S", 0.2)
    with served(api.app) as url, streams(url) as open_stream:
        stream = open_stream(api.key)
        deadline = time.monotonic() + 5
        while ": keep-alive" not in stream.comments and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ": keep-alive" in stream.comments
        stream.close()

        bad = httpx.get(
            f"{url}/v1/events", headers={"Authorization": f"Bearer {api.key}", "Last-Event-ID": "x"}
        )
        assert bad.status_code == 422 and bad.json()["code"] == "invalid_request"
        assert bad.headers["content-type"] == "application/problem+json"
        assert httpx.get(f"{url}/v1/events").status_code == 401

        # the server ended the stream when the client went: the request is over (and counted)
        line = 'synctalk_http_requests_total{method="GET",route="/v1/events",status="200"} 1.0'
        deadline = time.monotonic() + 5
        while line not in httpx.get(f"{url}/metrics").text and time.monotonic() < deadline:
            time.sleep(0.1)
        assert line in httpx.get(f"{url}/metrics").text


def test_stream_waits_for_an_earlier_event_that_is_still_committing(tmp_path, monkeypatch):
    """Postgres hands out ids before commit: a later id can be visible first. The stream must not skip
    the earlier one when it commits a moment later (nor wait forever for one rolled back)."""
    with postgres_url() as url:
        api = make_api(tmp_path, url)
        platform = api.platform
        subject = new_subject(platform, api.tenant_id, "Ann")

        def event(note: str) -> Event:
            return Event(
                tenant_id=api.tenant_id, type="subject.progress", resource="subject", resource_id=subject,
                data={"note": note},
            )  # fmt: skip

        monkeypatch.setattr(events_router, "GAP_WAIT_S", 10.0)
        monkeypatch.setattr(event_hub, "GAP_WAIT_S", 10.0)
        try:
            with served(api.app) as base, streams(base) as open_stream:
                stream = open_stream(api.key)
                slow = platform.sessions()
                early = event("early")
                slow.add(early)
                slow.flush()  # its id is taken; it commits later
                with platform.sessions() as s:
                    s.add(event("late"))
                    s.commit()
                with pytest.raises(queue.Empty):
                    stream.messages.get(timeout=0.6)  # "late" is held back while "early" is open
                slow.commit()
                got = stream.take(2)
                assert [m["data"]["note"] for m in got] == ["early", "late"]
                assert got[0]["id"] == early.id

                # a rolled-back id never commits: the stream moves on after GAP_WAIT_S
                monkeypatch.setattr(events_router, "GAP_WAIT_S", 0.3)
                monkeypatch.setattr(event_hub, "GAP_WAIT_S", 0.3)
                slow.add(event("rolled back"))
                slow.flush()
                slow.rollback()
                slow.close()
                with platform.sessions() as s:
                    s.add(event("after the gap"))
                    s.commit()
                assert stream.take(1, timeout=5)[0]["data"]["note"] == "after the gap"
        finally:
            api.close()


@pytest.mark.parametrize("commits_after", [1, 2, 3])
def test_filtered_stream_never_skips_an_event_that_commits_between_its_queries(
    tmp_path, database_url, commits_after
):
    """A filtered read is two statements (the events that match, then how far to skip when none do). An
    event for the filtered render that commits between or around them must still be delivered: the
    stream may skip unmatched events, never past one it did not see (the race CI once hit)."""
    api = make_api(tmp_path, database_url)
    platform = api.platform
    ann = new_subject(platform, api.tenant_id, "Ann")
    render = new_render(platform, api.tenant_id, ann)
    after = newest_event_id(platform)
    new_subject(platform, api.tenant_id, "unmatched")  # something the filtered stream skips past
    filters = events_router.Filters(api.tenant_id, None, render, None)
    reads_of_events, emitted = 0, []

    def commit_a_matching_event(conn, cursor, statement, *args):
        nonlocal reads_of_events
        if not statement.lstrip().upper().startswith("SELECT") or "events" not in statement:
            return
        reads_of_events += 1
        if reads_of_events == commits_after:
            with platform.sessions() as s:
                lifecycle.emit(s, "render", s.get(Render, render), status_changed=False)
                s.commit()
            emitted.append(newest_event_id(platform))

    sqlalchemy_event.listen(platform.engine, "after_cursor_execute", commit_a_matching_event)
    try:
        delivered: list[int] = []
        for _ in range(4):  # the stream's loop: read, send what matched, or skip as told
            rows, complete, skip_to = events_router._read(platform, filters, after, check_gaps=False)
            assert complete
            delivered += [event_id for event_id, _ in rows]
            after = rows[-1][0] if rows else max(after, skip_to)
    finally:
        sqlalchemy_event.remove(platform.engine, "after_cursor_execute", commit_a_matching_event)
    assert len(emitted) == 1, "the matching event was committed mid-read"
    assert delivered == emitted


# --- webhooks: the API ------------------------------------------------------------------------------
def test_webhook_api_validates_shows_the_secret_once_and_scopes_to_the_tenant(api):
    client = api.client()
    body = {"url": "https://hooks.example.com/synctalk?x=1", "events": ["subject.succeeded", "*.failed"]}
    r = client.post("/v1/webhooks", json=body, headers={"Idempotency-Key": "hook-1"})
    assert r.status_code == 201, r.text
    hook = r.json()
    assert r.headers["location"] == f"/v1/webhooks/{hook['id']}"
    assert (
        hook["url"] == body["url"] and hook["events"] == body["events"] and hook["created_at"].endswith("Z")
    )
    assert hook["secret"].startswith("whsec_") and len(base64.b64decode(hook["secret"][6:])) >= 24

    again = client.post("/v1/webhooks", json=body, headers={"Idempotency-Key": "hook-1"})
    assert again.status_code == 201 and again.json()["id"] == hook["id"]  # the same webhook, not a second
    conflict = client.post(
        "/v1/webhooks", json={**body, "events": ["*"]}, headers={"Idempotency-Key": "hook-1"}
    )
    assert conflict.status_code == 409

    listed = client.get("/v1/webhooks").json()
    assert [h["id"] for h in listed["items"]] == [hook["id"]] and listed["next_cursor"] is None
    assert (
        "secret" not in listed["items"][0] and "secret" not in client.get(f"/v1/webhooks/{hook['id']}").json()
    )

    refused = {
        "ftp://example.com/x": ["*"],
        "https://user:pass@example.com/x": ["*"],
        "https:///no-host": ["*"],
        "https://example.com/" + "a" * 2000: ["*"],
        "https://example.com/a": ["subject.progress"],
        "https://example.com/b": ["*.progress"],
        "https://example.com/c": ["subject.done"],
        "https://example.com/d": ["thing.*"],
        "https://example.com/e": [],
    }
    for url, events in refused.items():
        r = client.post("/v1/webhooks", json={"url": url, "events": events})
        assert r.status_code == 422, (url, events, r.text)
        assert r.json()["code"] == "invalid_request" and r.json()["detail"]
    for events in (["render.*"], ["*"], ["*.canceled", "subject.queued"]):
        assert (
            client.post("/v1/webhooks", json={"url": "http://127.0.0.1:9/x", "events": events}).status_code
            == 201
        )

    _, other_key = add_tenant(api.platform, "someone-else")
    other = api.client(other_key)
    assert other.get("/v1/webhooks").json()["items"] == []
    assert other.get(f"/v1/webhooks/{hook['id']}").status_code == 404
    assert other.delete(f"/v1/webhooks/{hook['id']}").status_code == 404
    assert client.delete(f"/v1/webhooks/{hook['id']}").status_code == 204
    assert client.get(f"/v1/webhooks/{hook['id']}").status_code == 404
    assert client.delete(f"/v1/webhooks/{hook['id']}").status_code == 404


# --- webhooks: deliveries ---------------------------------------------------------------------------
def verify(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """Standard Webhooks verification, written from the spec: HMAC-SHA256 keyed by the base64-decoded
    secret over ``id.timestamp.body``; the header holds space-separated ``v1,<base64>`` signatures."""
    key = base64.b64decode(secret.split("_", 1)[1])
    content = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, content, hashlib.sha256).digest()).decode()
    return any(
        version == "v1" and hmac.compare_digest(sig, expected)
        for version, _, sig in (part.partition(",") for part in headers["webhook-signature"].split(" "))
    )


def test_sign_matches_the_spec_example():
    # the example in the Standard Webhooks reference libraries' tests
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    got = webhooks.sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, '{"test": 2432232314}')
    assert got == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


@pytest.mark.parametrize(
    "pattern, event_type, expected",
    [
        ("subject.succeeded", "subject.succeeded", True),
        ("subject.succeeded", "render.succeeded", False),
        ("*.failed", "render.failed", True),
        ("*.failed", "render.canceled", False),
        ("render.*", "render.queued", True),
        ("render.*", "subject.queued", False),
        ("*", "subject.running", True),
        ("*", "subject.progress", False),
        ("render.*", "render.progress", False),
    ],
)
def test_matches(pattern, event_type, expected):
    assert webhooks.matches(pattern, event_type) is expected


def pending(platform) -> list[WebhookDelivery]:
    with platform.sessions() as s:
        return list(s.scalars(select(WebhookDelivery).where(WebhookDelivery.status == "pending")))


def hook(client, url: str, events: list[str]) -> dict:
    r = client.post("/v1/webhooks", json={"url": url, "events": events})
    assert r.status_code == 201, r.text
    return r.json()


def test_deliveries_reach_matching_webhooks_signed_once_each_and_stay_in_their_tenant(
    tmp_path, database_url, receivers
):
    api = make_api(tmp_path, database_url, webhook_allow_private=True)
    platform = api.platform
    other_id, other_key = add_tenant(platform, "someone-else")
    succeeded, everything, renders, theirs = receivers(), receivers(), receivers(), receivers()
    try:
        client = api.client()
        hooks = {
            "succeeded": hook(client, succeeded.url + "/a", ["subject.succeeded"]),
            "everything": hook(client, everything.url + "/b", ["*"]),
            "renders": hook(client, renders.url, ["render.*"]),
        }
        their_hook = hook(api.client(other_key), theirs.url, ["*"])
        start = newest_event_id(platform)

        ann = new_subject(platform, api.tenant_id, "Ann")
        run_job(platform, "subject", ann)
        bob = new_subject(platform, other_id, "Bob")
        fan_out_since(platform, start)
        assert fan_out_since(platform, start) == 0  # twice for one event adds nothing

        # two maintenance loops at once (two workers): every delivery is sent once
        counts: list[int] = []
        threads = [
            threading.Thread(
                target=lambda: counts.append(webhooks.deliver_due(platform.engine, allow_private=True))
            )
            for _ in range(2)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert webhooks.deliver_due(platform.engine, allow_private=True) == 0

        mine = [e for e in events_of(platform, api.tenant_id, start) if not e.type.endswith(".progress")]
        assert [e.type for e in mine] == ["subject.queued", "subject.running", "subject.succeeded"]
        assert sum(counts) == len(mine) + 1 + 1  # "everything" gets all; "succeeded" one; Bob's hook one
        assert [r.json["type"] for r in everything.requests] == [e.type for e in mine]  # in order
        assert [r.json["type"] for r in succeeded.requests] == ["subject.succeeded"]
        assert succeeded.requests[0].path == "/a" and everything.requests[0].path == "/b"
        assert renders.requests == []
        assert [(r.json["type"], r.json["data"]["id"]) for r in theirs.requests] == [("subject.queued", bob)]

        with platform.sessions() as s:
            deliveries = {d.id: d for d in s.scalars(select(WebhookDelivery))}
            by_id = {e.id: e for e in s.scalars(select(Event))}
        assert all(
            d.status == "delivered" and d.attempts == 1 and d.last_status_code == 200
            for d in deliveries.values()
        )
        secrets_ = {
            hooks["succeeded"]["id"]: hooks["succeeded"]["secret"],
            hooks["everything"]["id"]: hooks["everything"]["secret"],
            their_hook["id"]: their_hook["secret"],
        }
        for receiver in (succeeded, everything, theirs):
            for request in receiver.requests:
                delivery = deliveries[request.headers["webhook-id"]]
                event = by_id[delivery.event_id]
                assert request.headers["content-type"] == "application/json"
                assert abs(int(request.headers["webhook-timestamp"]) - time.time()) < 60
                assert verify(secrets_[delivery.webhook_id], request.headers, request.body)
                assert not verify(secrets_[delivery.webhook_id], request.headers, request.body + b" ")
                assert request.json == {
                    "type": event.type,
                    "timestamp": rfc3339(event.created_at),
                    "data": event.data,
                }
                assert event.tenant_id == (other_id if receiver is theirs else api.tenant_id)
    finally:
        api.close()


def test_failed_deliveries_are_retried_with_backoff_then_given_up(api, receivers, monkeypatch):
    monkeypatch.setattr(webhooks, "RETRY_SCHEDULE_S", (0.5, 0.5))  # 3 attempts in all
    monkeypatch.setattr(webhooks, "JITTER", 0.0)
    flaky, moved = receivers([500]), receivers([302, 302, 302])
    client = api.client()
    ids = {
        "flaky": hook(client, flaky.url, ["subject.queued"])["id"],
        "moved": hook(client, moved.url, ["subject.queued"])["id"],
        "dead": hook(client, f"http://127.0.0.1:{free_port()}/", ["subject.queued"])["id"],  # nothing listens
    }
    start = newest_event_id(api.platform)
    new_subject(api.platform, api.tenant_id, "Ann")
    fan_out_since(api.platform, start)
    assert len(pending(api.platform)) == 3

    def state() -> dict[str, WebhookDelivery]:
        with api.platform.sessions() as s:
            rows = s.scalars(select(WebhookDelivery)).all()
        return {name: next(d for d in rows if d.webhook_id == hook_id) for name, hook_id in ids.items()}

    assert webhooks.deliver_due(api.platform.engine, timeout_s=2, allow_private=True) == 3
    first = state()
    assert first["flaky"].last_status_code == 500 and first["flaky"].status == "pending"
    assert first["moved"].last_status_code == 302 and first["moved"].status == "pending"
    assert first["dead"].last_status_code is None and "Connect" in first["dead"].last_error
    assert all(d.attempts == 1 for d in first.values())
    assert webhooks.deliver_due(api.platform.engine, allow_private=True) == 0  # not due yet: backoff

    time.sleep(0.6)
    assert webhooks.deliver_due(api.platform.engine, timeout_s=2, allow_private=True) == 3
    second = state()
    assert second["flaky"].status == "delivered" and second["flaky"].attempts == 2
    assert len(flaky.requests) == 2 and len({r.headers["webhook-id"] for r in flaky.requests}) == 1  # same id
    assert second["dead"].status == "pending" and second["dead"].attempts == 2

    time.sleep(0.6)
    assert webhooks.deliver_due(api.platform.engine, timeout_s=2, allow_private=True) == 2
    third = state()
    assert (
        third["dead"].status == "failed"
        and third["moved"].status == "failed"
        and third["moved"].attempts == 3
    )
    assert [r.path for r in moved.requests] == ["/"] * 3  # the redirect was never followed
    time.sleep(0.6)
    assert webhooks.deliver_due(api.platform.engine, allow_private=True) == 0


def test_deleting_a_webhook_stops_its_deliveries(api, receivers):
    receiver = receivers()
    client = api.client()
    hook_id = hook(client, receiver.url, ["*"])["id"]
    start = newest_event_id(api.platform)
    ann = new_subject(api.platform, api.tenant_id, "Ann")
    fan_out_since(api.platform, start)
    assert len(pending(api.platform)) == 1  # not sent yet
    assert client.delete(f"/v1/webhooks/{hook_id}").status_code == 204
    with api.platform.sessions() as s:
        lifecycle.request_cancel(s, "subject", ann)
        s.commit()
    fan_out_since(api.platform, start)
    assert pending(api.platform) == []  # the webhook's deliveries went with it, and no new ones
    assert webhooks.deliver_due(api.platform.engine, allow_private=True) == 0
    assert receiver.requests == []


# --- webhooks: receivers on private addresses (SSRF) ------------------------------------------------
REFUSED_EVERYWHERE = {  # never allowed, whatever the settings
    "http://169.254.169.254/latest/meta-data/": "cloud metadata",
    "http://[fd00:ec2::254]/": "cloud metadata",
    "http://[::ffff:169.254.169.254]/": "cloud metadata",
    "http://100.100.100.200/": "cloud metadata",
    "http://metadata.google.internal/computeMetadata/v1/": "cloud metadata",
    "http://0.0.0.0:8080/": "unspecified",
    "http://224.0.0.1/": "multicast",
}
REFUSED_BY_DEFAULT = {  # allowed with webhook_allow_private (local receivers, tests)
    "http://127.0.0.1:8080/hook": "loopback",
    "http://10.1.2.3/hook": "private",
    "http://192.168.1.10/hook": "private",
    "http://[::1]/hook": "loopback",
    "http://[::ffff:127.0.0.1]/hook": "loopback",
    "http://100.64.0.1/hook": "carrier-grade NAT",
    "http://[fe80::1]/hook": "link-local",
    "http://localhost:8080/hook": "loopback",  # a name: refused for what it resolves to
    "http://2130706433/hook": "loopback",  # 127.0.0.1 as one number, which resolvers accept
}


def _register(client, url: str):
    return client.post("/v1/webhooks", json={"url": url, "events": ["*"]})


def test_webhook_urls_on_private_or_metadata_addresses_are_refused_at_registration(tmp_path):
    api = make_api(tmp_path)  # the default: webhook_allow_private off
    try:
        client = api.client()
        for url, why in {**REFUSED_EVERYWHERE, **REFUSED_BY_DEFAULT}.items():
            r = _register(client, url)
            assert r.status_code == 422, (url, r.text)
            assert r.headers["content-type"] == "application/problem+json"
            detail = r.json()["detail"]
            assert r.json()["code"] == "invalid_request" and why in detail and "public address" in detail, (
                detail
            )
        detail = _register(client, "http://localhost:8080/hook").json()["detail"]
        assert detail == (
            "The url's host localhost resolves to 127.0.0.1, a loopback address; "
            "webhooks must be sent to a public address."
        )
        assert _register(client, "http://93.184.216.34/hook").status_code == 201  # a public address
        # a name that does not resolve (yet) is accepted: every delivery looks it up and checks it again
        assert _register(client, "https://receiver.invalid/hook").status_code == 201
        assert [h["url"] for h in client.get("/v1/webhooks").json()["items"]] == [
            "https://receiver.invalid/hook",
            "http://93.184.216.34/hook",
        ]
    finally:
        api.close()


def test_allowing_private_receivers_never_allows_metadata_addresses(tmp_path):
    api = make_api(tmp_path, webhook_allow_private=True)
    try:
        client = api.client()
        for url in REFUSED_BY_DEFAULT:
            assert _register(client, url).status_code == 201, url
        for url, why in REFUSED_EVERYWHERE.items():
            r = _register(client, url)
            assert r.status_code == 422 and why in r.json()["detail"], (url, r.text)
    finally:
        api.close()


def test_dns_at_registration_is_bounded_and_a_name_it_cannot_answer_is_accepted():
    async def lookups() -> None:
        with pytest.raises(TimeoutError):  # no answer within 0 s (the lookup runs on a thread)
            await addresses.resolve_async("localhost", 80, 0)
        await webhooks.check_url_addresses("http://localhost/hook", timeout_s=0)  # accepted: not known
        with pytest.raises(ValueError, match="loopback"):
            await webhooks.check_url_addresses("http://localhost/hook", timeout_s=3)

    asyncio.run(lookups())


def _direct_hook(platform, tenant_id: str, url: str) -> str:
    """A webhook row written straight to the database (one registered before the checks, or by hand)."""
    with platform.sessions() as s:
        row = Webhook(tenant_id=tenant_id, url=url, events=["*"], secret=webhooks.new_secret())
        s.add(row)
        s.commit()
        return row.id


def _make_due(platform) -> None:
    with platform.sessions() as s:
        s.execute(update(WebhookDelivery).values(next_attempt_at=utcnow()))
        s.commit()


def test_deliveries_to_private_addresses_are_refused_unless_allowed(api, receivers):
    receiver = receivers()
    port = receiver.server.server_address[1]
    by_address = _direct_hook(api.platform, api.tenant_id, f"{receiver.url}/by-address")
    by_name = _direct_hook(api.platform, api.tenant_id, f"http://localhost:{port}/by-name")
    start = newest_event_id(api.platform)
    new_subject(api.platform, api.tenant_id, "Ann")
    fan_out_since(api.platform, start)

    assert webhooks.deliver_due(api.platform.engine, allow_private=False) == 2
    assert receiver.requests == []  # nothing was sent
    refused = {d.webhook_id: d for d in pending(api.platform)}
    assert set(refused) == {by_address, by_name}
    for delivery in refused.values():
        assert delivery.attempts == 1 and delivery.last_status_code is None
        assert delivery.last_error.startswith("not sent: ") and "a loopback address" in delivery.last_error
    assert "localhost resolves to 127.0.0.1" in refused[by_name].last_error

    _make_due(api.platform)
    assert webhooks.deliver_due(api.platform.engine, allow_private=True) == 2
    assert sorted(r.path for r in receiver.requests) == ["/by-address", "/by-name"]
    named = next(r for r in receiver.requests if r.path == "/by-name")
    assert named.headers["host"] == f"localhost:{port}"  # connected to the checked address, as the name


def _tls_receiver(tmp_path, receivers) -> tuple[Receiver, ssl.SSLContext, list[str]]:
    """A receiver serving https with a self-signed certificate for the name ``localhost`` only (no IP
    address in it); returns it, a client context trusting that certificate, and the SNI names it saw."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    seen: list[str] = []
    server_side = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_side.load_cert_chain(cert_file, key_file)
    server_side.sni_callback = lambda _sock, server_name, _ctx: seen.append(server_name)
    receiver = receivers(tls=server_side)
    return receiver, ssl.create_default_context(cafile=str(cert_file)), seen


def test_https_deliveries_send_and_verify_the_url_s_name_while_connecting_to_its_checked_address(
    api, receivers, tmp_path
):
    receiver, trust, sni_names = _tls_receiver(tmp_path, receivers)
    port = receiver.server.server_address[1]
    named = _direct_hook(api.platform, api.tenant_id, f"https://localhost:{port}/named")
    by_ip = _direct_hook(api.platform, api.tenant_id, f"https://127.0.0.1:{port}/by-ip")
    start = newest_event_id(api.platform)
    new_subject(api.platform, api.tenant_id, "Ann")
    fan_out_since(api.platform, start)

    assert webhooks.deliver_due(api.platform.engine, allow_private=True, verify=trust) == 2
    with api.platform.sessions() as s:
        state = {d.webhook_id: d for d in s.scalars(select(WebhookDelivery))}
    # the certificate names localhost: verified against the url's name, not the address connected to
    assert state[named].status == "delivered", state[named].last_error
    assert [r.path for r in receiver.requests] == ["/named"]
    assert receiver.requests[0].headers["host"] == f"localhost:{port}"
    assert sorted(sni_names, key=str) == [None, "localhost"]  # no SNI is sent for an address
    # and verification is on: the same certificate does not prove the address 127.0.0.1
    assert state[by_ip].status == "pending" and "CERTIFICATE_VERIFY_FAILED" in state[by_ip].last_error


# --- a stream lives as long as its key --------------------------------------------------------------
def test_a_stream_ends_when_its_key_is_revoked_and_sends_nothing_after(tmp_path, database_url, monkeypatch):
    monkeypatch.setattr(events_router, "KEY_RECHECK_S", 0.3)
    api = make_api(tmp_path, database_url, api_key_cache_s=0)  # idle streams check every KEY_RECHECK_S
    platform = api.platform
    quiet_key = add_key(platform, api.tenant_id)
    try:
        with served(api.app) as url, streams(url) as open_stream:
            busy, quiet = open_stream(api.key), open_stream(quiet_key)
            first = new_subject(platform, api.tenant_id, "before")
            assert busy.take(1)[0]["data"]["id"] == first and quiet.take(1)[0]["data"]["id"] == first

            revoke_key(platform, api.key)
            later = new_subject(platform, api.tenant_id, "after the revocation")
            assert busy.ended(5), "the stream of a revoked key went on"
            assert busy.messages.empty()  # not one event from after the revocation
            assert quiet.take(1)[0]["data"]["id"] == later  # the tenant's other key streams on

            revoke_key(platform, quiet_key)  # nothing happens afterwards: the periodic check ends it
            assert quiet.ended(5), "an idle stream of a revoked key went on"
            r = httpx.get(f"{url}/v1/events", headers={"Authorization": f"Bearer {api.key}"})
            assert r.status_code == 401  # and the reconnection is refused
    finally:
        api.close()


def test_streams_recheck_their_key_as_often_as_keys_are_cached(tmp_path):
    cached, uncached = (
        make_api(tmp_path / "a", api_key_cache_s=7.5),
        make_api(tmp_path / "b", api_key_cache_s=0),
    )
    try:
        assert events_router.key_recheck_s(cached.platform) == 7.5
        assert events_router.key_recheck_s(uncached.platform) == events_router.KEY_RECHECK_S
    finally:
        cached.close()
        uncached.close()


def test_a_dashboard_stream_ends_when_its_session_s_key_is_revoked(tmp_path):
    api = make_api(tmp_path, api_key_cache_s=0.5)
    platform = api.platform
    try:
        with served(api.app) as url, httpx.Client(base_url=url) as browser:
            form = browser.get("/login")
            token = re.search(r'name="login_token" value="([^"]+)"', form.text)[1]
            signed = browser.post("/login", data={"key": api.key, "login_token": token, "next": "/"})
            assert signed.status_code in (200, 303) and browser.cookies.get(session.COOKIE)
            cookie = {"Cookie": f"{session.COOKIE}={browser.cookies[session.COOKIE]}"}
            stream = EventStream(url, "", headers=cookie, path="/dashboard/api/v1/events")
            try:
                assert stream.status == 200, stream.body
                first = new_subject(platform, api.tenant_id, "before")
                assert stream.take(1)[0]["data"]["id"] == first
                revoke_key(platform, api.key)
                new_subject(platform, api.tenant_id, "after the revocation")
                assert stream.ended(5) and stream.messages.empty()
            finally:
                stream.close()
    finally:
        api.close()


def test_many_open_streams_cost_one_reader_of_the_event_table(api):
    """Every stream of an API process is served by one poll of the events (services/api/event_hub.py):
    40 open streams read the table about as often as one does, and each still gets its own events."""
    platform = api.platform
    subject = new_subject(platform, api.tenant_id, "Ann")
    reads = []

    def count(conn, cursor, statement, *args):
        if statement.lstrip().upper().startswith("SELECT") and "FROM events" in statement:
            reads.append(time.monotonic())

    with served(api.app) as base, streams(base) as open_stream:
        opened = [open_stream(api.key) for _ in range(20)]
        filtered = [open_stream(api.key, {"subject_id": subject}) for _ in range(20)]
        time.sleep(1.0)  # every stream in hub mode
        sqlalchemy_event.listen(platform.engine, "after_cursor_execute", count)
        try:
            time.sleep(3.0)
        finally:
            sqlalchemy_event.remove(platform.engine, "after_cursor_execute", count)
        # one poll each half second (the old way: two reads per stream each half second, 480 here)
        assert len(reads) <= 10, f"{len(reads)} reads of the event table in 3 s for 40 streams"
        with platform.sessions() as s:
            lifecycle.emit(s, "subject", s.get(Subject, subject), status_changed=False)
            s.commit()
        for stream in opened + filtered:
            assert stream.take(1, timeout=5)[0]["data"]["id"] == subject
