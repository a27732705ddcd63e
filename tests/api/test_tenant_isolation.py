"""Tenant isolation on every /v1 route (API.md "Basics"): another tenant's resource answers exactly like a
missing one (the same status, code and detail as a random id), lists and the event stream show none of
it, and nothing of it changes. The checks are a table keyed by route, and the table must name every /v1
route the app has: a route added without an isolation check fails ``test_every_v1_route_is_checked``.
Also: no key, a wrong key and a revoked key are 401 with ``WWW-Authenticate`` on every /v1 route."""

from __future__ import annotations

import io
import queue
import struct
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import fastapi.routing
import pytest
from api_helpers import Api, EventStream, add_tenant, make_api, new_batch, new_render, new_subject, served
from sqlalchemy import select, update
from starlette.testclient import TestClient

from services.api.routers import events as events_router
from shared.db.models import ApiKey, Render, Subject, Upload, utcnow
from shared.jobs import keys

PROBLEM = "application/problem+json"


@dataclass
class World:
    """Tenant A's resources (``a``: name -> id) and tenant B, who tries to reach them."""

    api: Api
    b_tenant: str
    b_key: str
    a: dict[str, str]
    b: dict[str, str] = field(default_factory=dict)
    a_files: list[str] = field(default_factory=list)

    @property
    def platform(self):
        return self.api.platform

    def client(self, tenant: str) -> TestClient:
        return self.api.client(self.api.key if tenant == "a" else self.b_key)

    def random_ids(self) -> dict[str, str]:
        return {name: uuid.uuid4().hex for name in self.a}


# a tenth of a second of 16-bit mono silence at 16 kHz: a WAV the inline check takes from its header
WAV = (
    b"RIFF"
    + struct.pack("<I", 36 + 3200)
    + b"WAVEfmt "
    + struct.pack("<IHHIIHH", 16, 1, 1, 16000, 32000, 2, 16)
)
WAV += b"data" + struct.pack("<I", 3200) + bytes(3200)


def _set(world_api: Api, model, row_id: str, **values) -> None:
    with world_api.platform.sessions() as s:
        s.execute(update(model).where(model.id == row_id).values(**values))
        s.commit()


def _upload(client: TestClient, data: bytes = b"\0" * 64) -> str:
    r = client.post(
        "/v1/uploads", json={"filename": "a.m4a", "content_type": "audio/mp4", "bytes": len(data)}
    )
    assert r.status_code == 201, r.text
    put = client.put(r.json()["url"], content=data, headers=r.json()["headers"])
    assert put.status_code == 200, put.text
    return r.json()["id"]


@pytest.fixture
def world(tmp_path: Path, monkeypatch) -> Iterator[World]:
    monkeypatch.setattr(events_router, "POLL_S", 0.05)
    api = make_api(tmp_path, min_train_seconds=2, default_profile="tiny")
    p = api.platform
    b_tenant, b_key = add_tenant(p, "other-studio")
    a_client = api.client()
    subject = new_subject(p, api.tenant_id, "anna")
    _set(api, Subject, subject, status="succeeded", progress=1.0)
    done = new_render(p, api.tenant_id, subject)
    video = keys.video_key(api.tenant_id, done)
    p.storage.put_stream(video, io.BytesIO(b"an mp4"))
    captions = keys.captions_key(api.tenant_id, done, "vtt")
    for fmt in ("vtt", "srt"):
        p.storage.put_stream(keys.captions_key(api.tenant_id, done, fmt), io.BytesIO(b"WEBVTT\n"))
    _set(api, Render, done, status="succeeded", progress=1.0, video_key=video, captions_key=captions)
    source = keys.source_key(api.tenant_id, subject)
    p.storage.put_stream(source, io.BytesIO(b"the source video"))
    batch = new_batch(p, api.tenant_id, subject)
    hook = a_client.post("/v1/webhooks", json={"url": "https://hooks.example.com/a", "events": ["*"]})
    assert hook.status_code == 201, hook.text
    a = {
        "subject": subject,
        "render": new_render(p, api.tenant_id, subject),  # queued: cancelable
        "done_render": done,
        "batch": batch,
        "batch_render": new_render(p, api.tenant_id, subject, batch_id=batch),
        "webhook": hook.json()["id"],
        "upload": _upload(a_client),
    }
    world = World(
        api, b_tenant, b_key, a, a_files=[video, source, keys.upload_key(api.tenant_id, a["upload"])]
    )
    b_subject = new_subject(p, b_tenant, "bruno")
    _set(api, Subject, b_subject, status="succeeded", progress=1.0)
    world.b = {
        "subject": b_subject,
        "upload": _upload(world.client("b")),
        "render": new_render(p, b_tenant, b_subject),
    }
    yield world
    api.close()


# --- "exactly like a missing one" ---------------------------------------------------------------------
Send = Callable[[TestClient, dict[str, str], World], object]


def assert_like_missing(world: World, send: Send) -> None:
    """``send`` with A's ids and with random ids, as tenant B: the same problem, id for id."""
    b = world.client("b")
    real_ids, fake_ids = world.a, world.random_ids()
    real, fake = send(b, real_ids, world), send(b, fake_ids, world)
    assert real.status_code == fake.status_code == 404, (real.text, fake.text)
    for r in (real, fake):
        assert r.headers["content-type"].startswith(PROBLEM)
        assert "location" not in r.headers
    real_body, fake_body = real.json(), fake.json()

    def anonymous(text: str, ids: dict[str, str]) -> str:
        for v in ids.values():
            text = text.replace(v, "<id>")
        return text

    assert real_body["code"] == fake_body["code"] and real_body["code"] in ("not_found", "upload_not_found")
    assert {**real_body, "detail": anonymous(real_body["detail"], real_ids)} == {
        **fake_body,
        "detail": anonymous(fake_body["detail"], fake_ids),
    }


def like_missing(*sends: Send) -> Callable[[World], None]:
    def check(world: World) -> None:
        for send in sends:
            assert_like_missing(world, send)

    return check


def _render_json(c: TestClient, ids: dict, w: World):
    return c.post(f"/v1/subjects/{ids['subject']}/renders", json={"upload_id": w.b["upload"]})


def _render_multipart(c: TestClient, ids: dict, w: World):
    return c.post(
        f"/v1/subjects/{ids['subject']}/renders", files={"audio": ("a.m4a", b"\0" * 64, "audio/mp4")}
    )


def _render_of_a_upload(c: TestClient, ids: dict, w: World):
    return c.post(f"/v1/subjects/{w.b['subject']}/renders", json={"upload_id": ids["upload"]})


def _batch_of_a_subject(c: TestClient, ids: dict, w: World):
    return c.post("/v1/batches", json={"subject_id": ids["subject"], "items": [{"upload_id": w.b["upload"]}]})


def _batch_of_a_upload(c: TestClient, ids: dict, w: World):
    return c.post("/v1/batches", json={"subject_id": w.b["subject"], "items": [{"upload_id": ids["upload"]}]})


# --- lists, streams, and the routes that create without naming an id -----------------------------------
def _listed(world: World, path: str, **params) -> list[dict]:
    r = world.client("b").get(path, params=params)
    assert r.status_code == 200, r.text
    return r.json()["items"]


def check_subject_list(world: World) -> None:
    assert [s["id"] for s in _listed(world, "/v1/subjects")] == [world.b["subject"]]
    assert _listed(world, "/v1/subjects", status="succeeded") == _listed(world, "/v1/subjects")


def check_render_list(world: World) -> None:
    assert [r["id"] for r in _listed(world, "/v1/renders")] == [world.b["render"]]
    assert _listed(world, "/v1/renders", subject_id=world.a["subject"]) == []
    assert _listed(world, "/v1/renders", batch_id=world.a["batch"]) == []
    assert _listed(world, "/v1/renders", status="succeeded") == []


def check_webhook_list(world: World) -> None:
    assert _listed(world, "/v1/webhooks") == []


def check_upload_create(world: World) -> None:
    """B's new upload lives under B's prefix, and A naming it is answered like a missing upload."""
    upload_id = _upload(world.client("b"))
    assert world.platform.storage.exists(keys.upload_key(world.b_tenant, upload_id))
    a = world.client("a")
    mine = a.post("/v1/subjects", json={"upload_id": upload_id})
    missing = a.post("/v1/subjects", json={"upload_id": "0" * 32})
    assert mine.status_code == missing.status_code == 404
    assert mine.json()["code"] == missing.json()["code"] == "upload_not_found"


def check_upload_batch_create(world: World) -> None:
    """B's uploads made in one call live under B's prefix; A naming them is answered like missing ones,
    in a batch as anywhere."""
    data = b"\0" * 64
    items = [{"filename": f"{i}.m4a", "content_type": "audio/mp4", "bytes": len(data)} for i in range(2)]
    r = world.client("b").post("/v1/uploads/batch", json={"items": items})
    assert r.status_code == 201, r.text
    for upload in r.json()["data"]:
        assert (
            world.client("b").put(upload["url"], content=data, headers=upload["headers"]).status_code == 200
        )
        assert world.platform.storage.exists(keys.upload_key(world.b_tenant, upload["id"]))
    theirs = [{"upload_id": u["id"]} for u in r.json()["data"]]
    a = world.client("a")
    r = a.post("/v1/batches", json={"subject_id": world.a["subject"], "items": theirs})
    assert r.status_code == 404 and r.json()["code"] == "upload_not_found", r.text


def check_upload_files(world: World) -> None:
    """Files B sends inline are stored under B's prefix; A naming them is answered like missing ones."""
    r = world.client("b").post("/v1/uploads/files", files=[("file", ("b.wav", WAV, "audio/wav"))] * 2)
    assert r.status_code == 201, r.text
    with world.platform.sessions() as s:
        for upload in r.json()["data"]:
            row = s.get(Upload, upload["id"])
            assert row.tenant_id == world.b_tenant and row.storage_key.startswith(
                f"tenants/{world.b_tenant}/"
            )
            assert world.platform.storage.exists(row.storage_key)
    theirs = [{"upload_id": u["id"]} for u in r.json()["data"]]
    r = world.client("a").post("/v1/batches", json={"subject_id": world.a["subject"], "items": theirs})
    assert r.status_code == 404 and r.json()["code"] == "upload_not_found", r.text


def check_webhook_create(world: World) -> None:
    """B's new webhook is B's: A cannot read or delete it, A's list does not show it."""
    r = world.client("b").post("/v1/webhooks", json={"url": "https://hooks.example.com/b", "events": ["*"]})
    assert r.status_code == 201, r.text
    hook = r.json()["id"]
    a = world.client("a")
    assert a.get(f"/v1/webhooks/{hook}").status_code == 404
    assert a.delete(f"/v1/webhooks/{hook}").status_code == 404
    assert [h["id"] for h in a.get("/v1/webhooks").json()["items"]] == [world.a["webhook"]]
    assert world.client("b").get(f"/v1/webhooks/{hook}").status_code == 200


def check_events(world: World) -> None:
    """B's stream, replayed from the start, carries B's events only; A's new events never reach it (B's
    own event after them is the sentinel: the stream is in id order). Filtered on A's ids: nothing."""
    a_ids: set[str] = set()
    with served(world.api.app) as base:
        stream = EventStream(base, world.b_key, headers={"Last-Event-ID": "0"})
        filtered = [
            EventStream(base, world.b_key, {name: world.a[key]}, {"Last-Event-ID": "0"})
            for name, key in (("subject_id", "subject"), ("render_id", "render"), ("batch_id", "batch"))
        ]
        try:
            new_subject(world.platform, world.api.tenant_id, "anna again")
            new_render(world.platform, world.api.tenant_id, world.a["subject"])
            a = world.client("a")
            a_ids |= {
                s["id"] for path in ("/v1/subjects", "/v1/renders") for s in a.get(path).json()["items"]
            }
            sentinel = new_subject(world.platform, world.b_tenant, "sentinel")
            seen: list[str] = []
            while not seen or seen[-1] != sentinel:
                seen.append(stream.take(1, timeout=10)[0]["data"]["id"])
            assert set(seen) == {world.b["subject"], world.b["render"], sentinel}
            assert not a_ids & set(seen)
            time.sleep(0.3)  # several polls of the filtered streams
            for s in filtered:
                assert s.status == 200
                with pytest.raises(queue.Empty):
                    s.messages.get_nowait()
        finally:
            for s in (stream, *filtered):
                s.close()


def check_subject_artifacts(world: World) -> None:
    """A's training curves and report pictures exist in storage, and B asking for them (or their list) is
    answered exactly as for a subject that does not exist."""
    from gpu_worker.preprocess.report_files import curves_key, report_image_key

    storage, a_tenant, subject = world.platform.storage, world.api.tenant_id, world.a["subject"]
    storage.put_bytes(curves_key(a_tenant, subject), b'{"points": [], "total_steps": 0}')
    storage.put_bytes(report_image_key(a_tenant, subject, "frames.jpg"), b"a jpeg")
    assert world.client("a").get(f"/v1/subjects/{subject}/report/images/frames.jpg").status_code == 200
    like_missing(
        lambda c, i, w: c.get(f"/v1/subjects/{i['subject']}/curves"),
        lambda c, i, w: c.get(f"/v1/subjects/{i['subject']}/report/images"),
        lambda c, i, w: c.get(f"/v1/subjects/{i['subject']}/report/images/frames.jpg"),
    )(world)


def check_render_retry(world: World) -> None:
    """B cannot retry A's renders, even a failed one (A's own retry of it works)."""
    failed = new_render(world.platform, world.api.tenant_id, world.a["subject"])
    _set(world.api, Render, failed, status="failed", error_code="render_failed", audio_key=world.a_files[0])
    world.a["failed_render"] = failed
    assert_like_missing(world, lambda c, i, w: c.post(f"/v1/renders/{i['failed_render']}/retry"))
    assert_like_missing(world, lambda c, i, w: c.post(f"/v1/renders/{i['done_render']}/retry"))
    assert world.client("a").post(f"/v1/renders/{failed}/retry").status_code == 202


CHECKS: dict[tuple[str, str], Callable[[World], None]] = {
    ("GET", "/v1/subjects/{subject_id}"): like_missing(lambda c, i, w: c.get(f"/v1/subjects/{i['subject']}")),
    ("DELETE", "/v1/subjects/{subject_id}"): like_missing(
        lambda c, i, w: c.delete(f"/v1/subjects/{i['subject']}")
    ),
    ("POST", "/v1/subjects/{subject_id}/cancel"): like_missing(
        lambda c, i, w: c.post(f"/v1/subjects/{i['subject']}/cancel")
    ),
    ("POST", "/v1/subjects/{subject_id}/renders"): like_missing(
        _render_json, _render_multipart, _render_of_a_upload
    ),
    ("POST", "/v1/subjects"): like_missing(
        lambda c, i, w: c.post("/v1/subjects", json={"upload_id": i["upload"]})
    ),
    ("GET", "/v1/subjects"): check_subject_list,
    ("GET", "/v1/renders/{render_id}"): like_missing(
        lambda c, i, w: c.get(f"/v1/renders/{i['render']}"),
        lambda c, i, w: c.get(f"/v1/renders/{i['done_render']}"),
    ),
    ("POST", "/v1/renders/{render_id}/cancel"): like_missing(
        lambda c, i, w: c.post(f"/v1/renders/{i['render']}/cancel")
    ),
    ("GET", "/v1/renders/{render_id}/video"): like_missing(
        lambda c, i, w: c.get(f"/v1/renders/{i['done_render']}/video", follow_redirects=False)
    ),
    ("GET", "/v1/renders/{render_id}/captions"): like_missing(
        lambda c, i, w: c.get(f"/v1/renders/{i['done_render']}/captions"),
        lambda c, i, w: c.get(f"/v1/renders/{i['done_render']}/captions?format=srt"),
    ),
    ("GET", "/v1/renders"): check_render_list,
    ("GET", "/v1/batches/{batch_id}"): like_missing(lambda c, i, w: c.get(f"/v1/batches/{i['batch']}")),
    ("POST", "/v1/batches"): like_missing(_batch_of_a_subject, _batch_of_a_upload),
    ("POST", "/v1/uploads"): check_upload_create,
    ("POST", "/v1/uploads/batch"): check_upload_batch_create,
    ("POST", "/v1/uploads/files"): check_upload_files,
    ("GET", "/v1/uploads/{upload_id}"): like_missing(lambda c, i, w: c.get(f"/v1/uploads/{i['upload']}")),
    ("GET", "/v1/webhooks/{webhook_id}"): like_missing(lambda c, i, w: c.get(f"/v1/webhooks/{i['webhook']}")),
    ("DELETE", "/v1/webhooks/{webhook_id}"): like_missing(
        lambda c, i, w: c.delete(f"/v1/webhooks/{i['webhook']}")
    ),
    ("GET", "/v1/webhooks"): check_webhook_list,
    ("POST", "/v1/webhooks"): check_webhook_create,
    ("GET", "/v1/events"): check_events,
    # additions for the dashboard (services/api/routers/artifacts.py)
    ("GET", "/v1/subjects/{subject_id}/curves"): check_subject_artifacts,
    ("GET", "/v1/subjects/{subject_id}/report/images"): check_subject_artifacts,
    ("GET", "/v1/subjects/{subject_id}/report/images/{name}"): check_subject_artifacts,
    ("POST", "/v1/renders/{render_id}/retry"): check_render_retry,
}


def v1_routes(app) -> set[tuple[str, str]]:
    """(method, path template) of every /v1 route, routers included (newer FastAPI keeps included
    routers as one entry each in ``app.routes``: ``iter_route_contexts`` flattens them)."""
    contexts = getattr(fastapi.routing, "iter_route_contexts", iter)(app.routes)
    return {
        (method, ctx.path)
        for ctx in contexts
        if (getattr(ctx, "path", None) or "").startswith("/v1/")
        for method in (getattr(ctx, "methods", None) or ())
        if method != "HEAD"
    }


def assert_a_untouched(world: World) -> None:
    """Whatever B tried, A's resources, files and their states are as they were."""
    a = world.client("a")
    assert a.get(f"/v1/subjects/{world.a['subject']}").json()["status"] == "succeeded"
    assert a.get(f"/v1/renders/{world.a['done_render']}").json()["status"] == "succeeded"
    assert a.get(f"/v1/renders/{world.a['render']}").json()["status"] in ("queued", "canceled")
    assert a.get(f"/v1/batches/{world.a['batch']}").json()["total"] == 1
    assert a.get(f"/v1/webhooks/{world.a['webhook']}").status_code == 200
    assert a.get(f"/v1/renders/{world.a['done_render']}/video", follow_redirects=False).status_code == 307
    assert a.get(f"/v1/renders/{world.a['done_render']}/captions").status_code == 200
    for key in world.a_files:
        assert world.platform.storage.exists(key), key


# --- the tests ------------------------------------------------------------------------------------------
def test_every_v1_route_is_checked(tmp_path):
    """The table above names exactly the app's /v1 routes (and the OpenAPI document's)."""
    api = make_api(tmp_path)
    try:
        routes = v1_routes(api.app)
        assert routes == set(CHECKS), (
            f"routes without a check: {routes - set(CHECKS)}; gone: {set(CHECKS) - routes}"
        )
        documented = {
            (method.upper(), path)
            for path, ops in api.client().get("/openapi.json").json()["paths"].items()
            if path.startswith("/v1")
            for method in ops
        }
        assert documented == routes
    finally:
        api.close()


@pytest.mark.parametrize("route", list(CHECKS), ids=[f"{m} {p}" for m, p in CHECKS])
def test_another_tenant_cannot_reach_a_resource(world, route):
    CHECKS[route](world)
    assert_a_untouched(world)
    a = world.client("a")
    if route != ("POST", "/v1/renders/{render_id}/cancel"):
        assert a.get(f"/v1/renders/{world.a['render']}").json()["status"] == "queued"


def test_the_same_idempotency_key_in_another_tenant_is_another_request(world):
    """Idempotency keys are per tenant: B reusing A's key gets B's own resource, never A's response."""
    body = {"url": "https://hooks.example.com/x", "events": ["*"]}
    a = world.client("a").post("/v1/webhooks", json=body, headers={"Idempotency-Key": "shared-key"})
    b = world.client("b").post("/v1/webhooks", json=body, headers={"Idempotency-Key": "shared-key"})
    assert a.status_code == b.status_code == 201
    assert a.json()["id"] != b.json()["id"] and a.json()["secret"] != b.json()["secret"]
    assert "idempotent-replayed" not in b.headers


def _example_path(path: str) -> str:
    return path.format(
        **{
            name: uuid.uuid4().hex
            for name in ("subject_id", "render_id", "batch_id", "webhook_id", "upload_id", "name")
        }
    )


@pytest.mark.parametrize("credential", ["none", "not bearer", "wrong key", "unknown prefix", "revoked"])
def test_every_v1_route_wants_a_valid_key(world, credential: str):
    key = world.b_key
    headers = {
        "none": {},
        "not bearer": {"Authorization": f"Basic {key}"},
        "wrong key": {"Authorization": f"Bearer {key[:-4]}abcd"},  # the right prefix, the wrong key
        "unknown prefix": {"Authorization": "Bearer stk_" + "x" * 40},
    }.get(credential)
    if credential == "revoked":
        with world.platform.sessions() as s:
            s.execute(update(ApiKey).where(ApiKey.tenant_id == world.b_tenant).values(revoked_at=utcnow()))
            s.commit()
            assert s.scalars(select(ApiKey).where(ApiKey.tenant_id == world.b_tenant)).one().revoked_at
        world.platform.verified_keys.clear()  # as after api_key_cache_s (test_keycache.py checks that wait)
        headers = {"Authorization": f"Bearer {key}"}
    client = TestClient(world.api.app, raise_server_exceptions=False)
    world.api.clients.append(client)
    for method, path in sorted(v1_routes(world.api.app)):
        r = client.request(method, _example_path(path), headers=headers)
        assert r.status_code == 401, (method, path, r.status_code, r.text)
        assert r.headers["content-type"].startswith(PROBLEM)
        assert r.headers["www-authenticate"] == "Bearer"
        assert r.json()["code"] == "unauthorized" and r.json()["detail"]
    assert world.client("a").get("/v1/subjects").status_code == 200  # A's key is unaffected
