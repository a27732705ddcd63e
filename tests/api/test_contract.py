"""The v1 contract (API.md) as a client sees it: creates answer 202 with a Location and the documented
fields, times are RFC 3339 UTC, ``Idempotency-Key`` replays or conflicts, lists page newest first with
cursors and filters, batches are one transaction, a render's video is 409 until it exists, and the
OpenAPI document names every route of API.md. Real parts throughout: a migrated database, a storage
folder, the embedded broker (queue depths are read from it), the app over TestClient."""

from __future__ import annotations

import io
import re
import wave
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from api_helpers import Api, make_api, new_render, new_subject, postgres_url, run_job
from sqlalchemy import func, select, update

from shared.db.models import Batch, Render, Subject, Upload
from shared.jobs import keys, lifecycle
from shared.jobs.uploads import fetch_upload
from shared.queue.stages import QUEUES

PROBLEM = "application/problem+json"
RFC3339_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")
JOB_FIELDS = {
    "id",
    "status",
    "stage",
    "progress",
    "error",
    "created_at",
    "updated_at",
    "started_at",
    "finished_at",
}
STAGE_FIELDS = {"name", "status", "progress", "started_at", "finished_at", "message"}
SUBJECT_FIELDS = JOB_FIELDS | {"stages", "name", "profile", "report", "metrics"}
RENDER_FIELDS = JOB_FIELDS | {"stages", "subject_id", "mode", "duration_s", "qc", "video_url"}
STATUSES = {"queued", "running", "succeeded", "failed", "canceled"}
TIMES = ("created_at", "updated_at", "started_at", "finished_at")


# --- platform state (the `media` fixture: conftest.py) ---------------------------------------------


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    made = make_api(tmp_path, min_train_seconds=2, default_profile="tiny")
    yield made
    made.close()


def queued(api: Api) -> int:
    """Tasks waiting on the embedded broker, over every queue."""
    total = 0
    with api.platform.celery.connection_for_write() as conn:
        for q in QUEUES:
            channel = conn.channel()
            try:
                total += channel.queue_declare(queue=q, passive=True).message_count
            finally:
                channel.close()
    return total


def count(api: Api, model, *where) -> int:
    with api.platform.sessions() as s:
        return s.scalar(select(func.count()).select_from(model).where(*where))


def ready_subject(api: Api, name: str = "anna") -> str:
    """A subject whose training succeeded (set in the database: the workers are not under test here)."""
    subject_id = new_subject(api.platform, api.tenant_id, name)
    with api.platform.sessions() as s:
        s.execute(update(Subject).where(Subject.id == subject_id).values(status="succeeded", progress=1.0))
        s.commit()
    return subject_id


def presigned(api: Api, data: bytes, filename: str = "speech.m4a") -> str:
    client = api.client()
    r = client.post(
        "/v1/uploads", json={"filename": filename, "content_type": "audio/mp4", "bytes": len(data)}
    )
    assert r.status_code == 201, r.text
    assert set(r.json()) >= {"id", "url", "method", "headers", "expires_at"}
    assert RFC3339_UTC.match(r.json()["expires_at"])
    assert client.put(r.json()["url"], content=data, headers=r.json()["headers"]).status_code == 200
    return r.json()["id"]


def assert_problem(r, status: int, code: str) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(PROBLEM)
    body = r.json()
    assert body["code"] == code and body["status"] == status and body["detail"] and body["title"], body
    return body


def assert_time(value: str | None, *, near: datetime | None = None) -> None:
    assert value is not None and RFC3339_UTC.match(value), value
    if near is not None:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
        assert abs(t - near) < timedelta(minutes=1), (value, near)


def assert_job(doc: dict, fields: set[str], kind: str) -> None:
    assert fields <= set(doc), fields - set(doc)
    assert doc["object"] == kind and doc["status"] in STATUSES and 0.0 <= doc["progress"] <= 1.0
    for name in TIMES:
        if doc[name] is not None:
            assert_time(doc[name], near=datetime.now(UTC))
    assert doc["stages"], "a job lists its stages"
    for stage in doc["stages"]:
        assert set(stage) >= STAGE_FIELDS and stage["status"] in STATUSES
        for name in ("started_at", "finished_at"):
            if stage[name] is not None:
                assert_time(stage[name])


# --- creates: 202, Location, the documented document --------------------------------------------------
def test_creating_a_subject_answers_202_its_location_and_the_documented_fields(api, media):
    client = api.client()
    r = client.post("/v1/subjects", files={"video": ("talk.mp4", media["video"], "video/mp4")})
    assert r.status_code == 202, r.text
    subject = r.json()
    assert r.headers["location"] == f"/v1/subjects/{subject['id']}"
    assert_job(subject, SUBJECT_FIELDS, "subject")
    assert subject["status"] == "queued" and subject["progress"] == 0.0 and subject["error"] is None
    assert subject["name"] == "talk" and subject["profile"] == "tiny"
    assert subject["report"] is None and subject["metrics"] is None
    assert subject["started_at"] is None and subject["finished_at"] is None
    assert [s["status"] for s in subject["stages"]] == ["queued"] * len(subject["stages"])
    assert client.get(r.headers["location"]).json() == subject

    # JSON naming a presigned upload, with the optional fields
    upload_id = presigned(api, media["video"], "interview.mp4")
    r = client.post("/v1/subjects", json={"upload_id": upload_id, "name": "Anna K.", "profile": "preview"})
    assert r.status_code == 202, r.text
    assert r.json()["name"] == "Anna K." and r.json()["profile"] == "preview"
    assert r.headers["location"] == f"/v1/subjects/{r.json()['id']}"
    assert count(api, Subject) == 2 and queued(api) == 2


def test_creating_a_render_answers_202_its_location_and_the_documented_fields(api, media):
    client = api.client()
    subject_id = ready_subject(api)
    r = client.post(
        f"/v1/subjects/{subject_id}/renders",
        files={"audio": ("speech.m4a", media["speech"], "audio/mp4")},
        data={"mode": "portrait", "ref": "episode-1"},
    )
    assert r.status_code == 202, r.text
    render = r.json()
    assert r.headers["location"] == f"/v1/renders/{render['id']}"
    assert_job(render, RENDER_FIELDS, "render")
    assert (
        render["subject_id"] == subject_id and render["mode"] == "portrait" and render["ref"] == "episode-1"
    )
    assert render["status"] == "queued" and render["video_url"] is None and render["qc"] is None
    assert render["duration_s"] is None and render["error"] is None
    assert client.get(r.headers["location"]).json() == render
    assert queued(api) == 1  # the subject is ready: its first stage is sent

    # a render of a subject still training waits, queued, with nothing sent yet; JSON body, default mode
    training = new_subject(api.platform, api.tenant_id, "bruno")
    r = client.post(f"/v1/subjects/{training}/renders", json={"upload_id": presigned(api, media["speech"])})
    assert r.status_code == 202, r.text
    assert r.json()["status"] == "queued" and r.json()["mode"] == "fullframe"
    assert queued(api) == 1


def test_times_are_rfc3339_utc_through_a_jobs_life(api):
    subject_id = new_subject(api.platform, api.tenant_id, "anna")
    run_job(api.platform, "subject", subject_id)
    doc = api.client().get(f"/v1/subjects/{subject_id}").json()
    assert doc["status"] == "succeeded" and doc["progress"] == 1.0
    now = datetime.now(UTC)
    for name in TIMES:
        assert_time(doc[name], near=now)
    for stage in doc["stages"]:
        assert_time(stage["started_at"], near=now)
        assert_time(stage["finished_at"], near=now)
    assert doc["created_at"] <= doc["started_at"] <= doc["finished_at"]


# --- Idempotency-Key --------------------------------------------------------------------------------------
def test_the_same_idempotency_key_replays_and_another_request_with_it_conflicts(api, media):
    client = api.client()
    video = {"video": ("talk.mp4", media["video"], "video/mp4")}
    first = client.post("/v1/subjects", files=video, headers={"Idempotency-Key": "subject-1"})
    again = client.post("/v1/subjects", files=video, headers={"Idempotency-Key": "subject-1"})
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"] and again.headers["location"] == first.headers["location"]
    assert again.headers.get("idempotent-replayed") == "true"
    assert count(api, Subject) == 1 and queued(api) == 1
    other = client.post(
        "/v1/subjects", files=video, data={"name": "else"}, headers={"Idempotency-Key": "subject-1"}
    )
    assert_problem(other, 409, "idempotency_conflict")

    subject_id = ready_subject(api)
    upload_id = presigned(api, media["speech"])
    path, key = f"/v1/subjects/{subject_id}/renders", {"Idempotency-Key": "render-1"}
    first = client.post(path, json={"upload_id": upload_id}, headers=key)
    again = client.post(path, json={"upload_id": upload_id}, headers=key)
    assert first.status_code == again.status_code == 202 and again.json()["id"] == first.json()["id"]
    assert_problem(client.post(path, json={"upload_id": upload_id, "mode": "crop"}, headers=key), 409,
                   "idempotency_conflict")  # fmt: skip
    assert count(api, Render) == 1 and queued(api) == 2

    batch = {"subject_id": subject_id, "items": [{"upload_id": upload_id, "ref": "a"}]}
    first = client.post("/v1/batches", json=batch, headers={"Idempotency-Key": "batch-1"})
    again = client.post("/v1/batches", json=batch, headers={"Idempotency-Key": "batch-1"})
    assert first.status_code == again.status_code == 202 and again.json() == first.json()
    assert count(api, Batch) == 1 and count(api, Render) == 2 and queued(api) == 3
    # the key of one route used on another is another request too
    assert_problem(client.post("/v1/batches", json=batch, headers={"Idempotency-Key": "render-1"}), 409,
                   "idempotency_conflict")  # fmt: skip


# --- lists ----------------------------------------------------------------------------------------------
@pytest.fixture(params=["sqlite", "postgres"])
def any_db_api(request, tmp_path: Path) -> Iterator[Api]:
    if request.param == "sqlite":
        made = make_api(tmp_path)
        yield made
        made.close()
        return
    with postgres_url() as url:
        made = make_api(tmp_path, url)
        yield made
        made.close()


def _pages(client, path: str, **params) -> list[list[str]]:
    pages, cursor = [], None
    while True:
        r = client.get(path, params={**params, **({"cursor": cursor} if cursor else {})})
        assert r.status_code == 200, r.text
        body = r.json()
        assert set(body) == {"items", "next_cursor"}
        pages.append([item["id"] for item in body["items"]])
        cursor = body["next_cursor"]
        if cursor is None:
            return pages
        assert len(pages) < 20, "the cursor never ends"


def test_lists_page_newest_first_without_repeats_or_gaps_and_filter(any_db_api):
    api = any_db_api
    client = api.client()
    subject_id = ready_subject(api)
    other = ready_subject(api, "bruno")
    made = [new_render(api.platform, api.tenant_id, subject_id) for _ in range(7)]
    elsewhere = new_render(api.platform, api.tenant_id, other)

    pages = _pages(client, "/v1/renders", limit=3, subject_id=subject_id)
    assert [len(p) for p in pages] == [3, 3, 1]
    assert [i for p in pages for i in p] == made[::-1]  # newest first, each once

    everything = [i for p in _pages(client, "/v1/renders", limit=3) for i in p]
    assert everything == [elsewhere, *made[::-1]]
    for canceled in made[:2]:
        assert client.post(f"/v1/renders/{canceled}/cancel").status_code == 202
    assert [
        r["id"] for r in client.get("/v1/renders", params={"status": "canceled"}).json()["items"]
    ] == made[1::-1]
    r = client.get("/v1/renders", params={"status": "queued", "subject_id": subject_id})
    assert [x["id"] for x in r.json()["items"]] == made[:1:-1]
    assert [x["id"] for x in client.get("/v1/renders", params={"subject_id": other}).json()["items"]] == [
        elsewhere
    ]

    new_subject(api.platform, api.tenant_id, "carla")  # queued
    assert [s["id"] for s in client.get("/v1/subjects", params={"status": "succeeded"}).json()["items"]] == [
        other,
        subject_id,
    ]
    assert [len(p) for p in _pages(client, "/v1/subjects", limit=2)] == [2, 1]


def test_list_limits_default_50_max_500(api):
    client = api.client()
    subject_id = ready_subject(api)
    with api.platform.sessions() as s:
        subject = s.get(Subject, subject_id)
        for _ in range(50):
            lifecycle.create_render(s, api.tenant_id, subject)
        s.commit()
    r = client.get("/v1/renders")
    assert len(r.json()["items"]) == 50 and r.json()["next_cursor"] is None  # exactly 50: one page
    new_render(api.platform, api.tenant_id, subject_id)
    r = client.get("/v1/renders")
    assert len(r.json()["items"]) == 50 and r.json()["next_cursor"]
    rest = client.get("/v1/renders", params={"cursor": r.json()["next_cursor"]}).json()
    assert len(rest["items"]) == 1 and rest["next_cursor"] is None
    r = client.get("/v1/renders", params={"limit": 500})
    assert len(r.json()["items"]) == 51 and r.json()["next_cursor"] is None
    for path in ("/v1/renders", "/v1/subjects", "/v1/webhooks"):
        assert_problem(client.get(path, params={"limit": 501}), 422, "invalid_request")
        assert_problem(client.get(path, params={"limit": 0}), 422, "invalid_request")
        assert_problem(client.get(path, params={"cursor": "not-a-cursor"}), 422, "invalid_cursor")


# --- batches ----------------------------------------------------------------------------------------------
def test_a_batch_creates_its_renders_in_one_transaction_and_counts_them(api, media):
    client = api.client()
    subject_id = ready_subject(api)
    uploads = [presigned(api, media["speech"]) for _ in range(3)]
    items = [{"upload_id": u, "ref": f"line-{i}", "mode": "crop"} for i, u in enumerate(uploads)]
    r = client.post("/v1/batches", json={"subject_id": subject_id, "items": items})
    assert r.status_code == 202, r.text
    batch = r.json()
    assert r.headers["location"] == f"/v1/batches/{batch['id']}"
    assert [x["ref"] for x in batch["renders"]] == ["line-0", "line-1", "line-2"]
    assert count(api, Render, Render.batch_id == batch["id"]) == 3 and queued(api) == 3
    render = client.get(f"/v1/renders/{batch['renders'][0]['id']}").json()
    assert render["mode"] == "crop" and render["batch_id"] == batch["id"] and render["ref"] == "line-0"

    status = client.get(f"/v1/batches/{batch['id']}").json()
    assert status["total"] == 3 and status["counts"]["queued"] == 3 and status["done"] is False
    assert set(status["counts"]) == STATUSES
    for x in batch["renders"]:
        client.post(f"/v1/renders/{x['id']}/cancel")
    status = client.get(f"/v1/batches/{batch['id']}").json()
    assert status["counts"]["canceled"] == 3 and status["counts"]["queued"] == 0 and status["done"] is True


@pytest.mark.parametrize("bad", ["not_media", "missing", "bad_mode"])
def test_a_batch_with_one_bad_item_creates_nothing(api, media, bad: str):
    """The bad item comes last, after two good ones: the whole batch is refused, no batch, no render,
    no task, and the answer says which item."""
    client = api.client()
    subject_id = ready_subject(api)
    items = [{"upload_id": presigned(api, media["speech"])} for _ in range(2)]
    if bad == "not_media":  # PUT but never checked: the batch is where it is first probed
        items.append({"upload_id": presigned(api, b"just some text, not a speech track\n", "notes.m4a")})
    elif bad == "missing":
        items.append({"upload_id": "0" * 32})
    else:
        items.append({"upload_id": items[0]["upload_id"], "mode": "sideways"})
    r = client.post("/v1/batches", json={"subject_id": subject_id, "items": items})
    status, code = {"not_media": (422, "not_media"), "missing": (404, "upload_not_found")}.get(
        bad, (422, "invalid_request")
    )
    body = assert_problem(r, status, code)
    assert body["detail"].startswith("items[2]: "), body
    assert count(api, Batch) == 0 and count(api, Render) == 0 and queued(api) == 0
    # the good items still make a batch once the bad one is gone
    r = client.post("/v1/batches", json={"subject_id": subject_id, "items": items[:2]})
    assert r.status_code == 202 and count(api, Render) == 2 and queued(api) == 2


def wav(seconds: float, pitch: float, rate: int = 16000) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    pcm = (0.3 * np.sin(2 * np.pi * pitch * t) * 32767).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(rate), w.writeframes(pcm.tobytes())
    return buf.getvalue()


def test_many_uploads_in_one_call_in_order_all_or_nothing(api):
    client = api.client()
    items = [{"filename": f"line-{i}.wav", "content_type": "audio/wav", "bytes": 1000 + i} for i in range(5)]
    r = client.post("/v1/uploads/batch", json={"items": items}, headers={"Idempotency-Key": "ups-1"})
    assert r.status_code == 201, r.text
    made = r.json()["data"]
    assert r.json()["object"] == "list" and len({u["id"] for u in made}) == 5
    assert all(u["method"] == "PUT" and RFC3339_UTC.match(u["expires_at"]) for u in made)
    for item, upload in zip(items, made, strict=True):  # in the items' order, each its own
        doc = client.get(f"/v1/uploads/{upload['id']}").json()
        assert (doc["filename"], doc["bytes"], doc["status"]) == (item["filename"], item["bytes"], "pending")
    again = client.post("/v1/uploads/batch", json={"items": items}, headers={"Idempotency-Key": "ups-1"})
    assert again.json() == r.json()  # a retried call gets the same uploads back
    # one item of the wrong type or too large refuses the call, naming it; nothing is made
    before = count(api, Upload)
    for bad, status, code in (({"content_type": "text/plain"}, 415, "unsupported_media"),
                              ({"bytes": 10**13}, 413, "file_too_large")):  # fmt: skip
        body = assert_problem(
            client.post("/v1/uploads/batch", json={"items": [*items[:3], {**items[3], **bad}]}), status, code
        )
        assert body["detail"].startswith("items[3]: ")
    assert count(api, Upload) == before
    r = client.post("/v1/uploads/batch", json={"items": [items[0]] * 1001})
    assert_problem(r, 422, "invalid_request")


def test_a_batch_checks_its_new_uploads_together_and_keeps_their_verdicts(api, media, monkeypatch):
    """Twelve WAVs (checked from their headers), two AAC tracks (fetched and probed) and, at item 7, a
    text file: the batch is refused naming item 7 and creates nothing, but every verdict is kept, so
    the batch without it is created without checking anything again."""
    from services.api import intake

    client = api.client()
    subject_id = ready_subject(api)
    files = [(f"t{i}.wav", wav(0.3, 200 + 10 * i)) for i in range(12)] + [("a.m4a", media["speech"])] * 2
    files.insert(7, ("notes.wav", b"RIFF but then just text, not a speech track\n" * 3))
    items = [{"upload_id": presigned(api, data, name), "ref": name} for name, data in files]
    body = assert_problem(client.post("/v1/batches", json={"subject_id": subject_id, "items": items}),
                          422, "not_media")  # fmt: skip
    assert body["detail"].startswith("items[7]: notes.wav")
    assert count(api, Batch) == 0 and count(api, Render) == 0 and queued(api) == 0
    with api.platform.sessions() as s:
        rows = {u.id: u for u in s.scalars(select(Upload))}
        verdicts = [
            (rows[i["upload_id"]].status, (rows[i["upload_id"]].probe or {}).get("backend")) for i in items
        ]
    assert verdicts[7] == ("refused", None)
    assert verdicts[:7] + verdicts[8:13] == [("received", "wav-header")] * 12
    assert [status for status, _ in verdicts[13:]] == ["received"] * 2
    assert rows[items[0]["upload_id"]].probe["audio"]["duration_s"] == pytest.approx(0.3)

    inspected = []
    monkeypatch.setattr(intake, "inspect", lambda *a: inspected.append(a) or pytest.fail("checked again"))
    good = items[:7] + items[8:]
    r = client.post("/v1/batches", json={"subject_id": subject_id, "items": good})
    assert r.status_code == 202, r.text
    assert [x["ref"] for x in r.json()["renders"]] == [i["ref"] for i in good]
    assert count(api, Render) == 14 and queued(api) == 14 and inspected == []


def test_small_files_sent_inline_are_checked_stored_and_ready_to_use(api, media, monkeypatch, tmp_path):
    from services.api import intake

    client = api.client()
    files = [("file", (f"t{i}.wav", wav(0.2, 300 + 20 * i), "audio/wav")) for i in range(3)]
    files.append(("file", ("a.m4a", media["speech"], "audio/mp4")))
    r = client.post("/v1/uploads/files", files=files, headers={"Idempotency-Key": "inline-1"})
    assert r.status_code == 201, r.text
    made = r.json()["data"]
    assert [(u["filename"], u["status"]) for u in made] == [
        ("t0.wav", "received"), ("t1.wav", "received"), ("t2.wav", "received"), ("a.m4a", "received")
    ]  # fmt: skip
    assert [u["bytes"] for u in made] == [len(f[1][1]) for f in files]
    with api.platform.sessions() as s:
        rows = [s.get(Upload, u["id"]) for u in made]
        assert len({row.storage_key for row in rows}) == 1  # one object for the call, not one per file
        assert rows[0].storage_key.startswith(f"tenants/{api.tenant_id}/uploads/")
        for row, f in zip(rows, files, strict=True):  # each part as sent
            assert fetch_upload(api.platform.storage, row, tmp_path / row.id).read_bytes() == f[1][1]
    assert len(list(api.platform.storage.list(f"tenants/{api.tenant_id}/uploads/"))) == 1
    again = client.post("/v1/uploads/files", files=files, headers={"Idempotency-Key": "inline-1"})
    assert again.json() == r.json()  # a retried call: the same uploads, nothing stored twice
    assert count(api, Upload) == 4

    # named in a batch as they are: already checked, nothing fetched again
    monkeypatch.setattr(intake, "inspect", lambda *a: pytest.fail("checked again"))
    items = [{"upload_id": u["id"], "ref": u["filename"]} for u in made]
    r = client.post("/v1/batches", json={"subject_id": ready_subject(api), "items": items})
    assert r.status_code == 202, r.text
    assert count(api, Render) == 4 and queued(api) == 4


def test_inline_files_are_all_or_nothing(api, monkeypatch):
    from services.api import intake

    client = api.client()
    stored_before = sorted(api.platform.storage.list(""))
    good = [("file", (f"t{i}.wav", wav(0.2, 300 + 20 * i), "audio/wav")) for i in range(3)]
    cases = [
        ([*good[:2], ("file", ("notes.wav", b"not a speech track at all\n" * 20, "audio/wav")), good[2]],
         422, "not_media", "items[2]: notes.wav"),
        ([good[0], ("file", ("notes.txt", b"hello", "text/plain"))], 415, "unsupported_media", "items[1]: "),
        ([good[0], ("file", ("empty.wav", b"", "audio/wav"))], 422, "empty_file", "items[1]: "),
    ]  # fmt: skip
    for files, status, code, starts in cases:
        body = assert_problem(client.post("/v1/uploads/files", files=files), status, code)
        assert body["detail"].startswith(starts), body
    monkeypatch.setattr(intake, "INLINE_FILE_MAX", 5000)  # a track of 0.2 s at 16 kHz is 6.4 KB
    body = assert_problem(client.post("/v1/uploads/files", files=good[:1]), 413, "file_too_large")
    assert body["detail"].startswith("items[0]: t0.wav is larger than")
    assert_problem(client.post("/v1/uploads/files", json={"file": "t.wav"}), 422, "invalid_request")
    assert_problem(client.post("/v1/uploads/files", files={"other": ("t.wav", b"x")}), 422, "invalid_request")
    assert count(api, Upload) == 0 and sorted(api.platform.storage.list("")) == stored_before


# --- a render's video ---------------------------------------------------------------------------------
def test_a_renders_video_is_409_until_it_succeeded_then_a_redirect_to_the_file(api):
    client = api.client()
    render_id = new_render(api.platform, api.tenant_id, ready_subject(api))
    body = assert_problem(
        client.get(f"/v1/renders/{render_id}/video", follow_redirects=False), 409, "not_ready"
    )
    assert "queued" in body["detail"]
    video = keys.video_key(api.tenant_id, render_id)
    api.platform.storage.put_stream(video, io.BytesIO(b"\0\0\0\x18ftypmp42 the video"))
    with api.platform.sessions() as s:
        s.execute(update(Render).where(Render.id == render_id).values(status="succeeded", video_key=video))
        s.commit()
    doc = client.get(f"/v1/renders/{render_id}").json()
    assert doc["video_url"].endswith(f"/v1/renders/{render_id}/video")
    r = client.get(f"/v1/renders/{render_id}/video", follow_redirects=False)
    assert r.status_code in (302, 307) and "/storage/" in r.headers["location"]
    got = client.get(r.headers["location"])
    assert got.status_code == 200 and got.content.endswith(b"the video")
    assert (
        got.headers["content-type"] == "video/mp4"
        and f"{render_id}.mp4" in got.headers["content-disposition"]
    )


# --- a render's captions ------------------------------------------------------------------------------
def test_captions_are_asked_for_at_creation_and_served_once_the_render_succeeded(api, media):
    client = api.client()
    subject_id = ready_subject(api)
    url = f"/v1/subjects/{subject_id}/renders"
    r = client.post(
        url, json={"upload_id": presigned(api, media["speech"]), "language": "DE", "captions": "burn"}
    )
    assert r.status_code == 202, r.text
    doc = r.json()
    assert doc["language"] == "de" and doc["captions"] == "burn" and doc["captions_url"] is None
    with api.platform.sessions() as s:
        row = s.get(Render, doc["id"])
        assert (row.language, row.captions, row.captions_key) == ("de", "burn", None)
    # form fields too; the defaults: captions on, the language detected
    r = client.post(url, files={"audio": ("speech.m4a", media["speech"], "audio/mp4")}, data={"ref": "ep 1"})
    assert r.status_code == 202 and r.json()["captions"] == "on" and r.json()["language"] is None
    render_id = r.json()["id"]
    for bad in ({"language": "klingon"}, {"language": "en-US"}, {"captions": "yes"}):
        body = {"upload_id": presigned(api, media["speech"]), **bad}
        assert_problem(client.post(url, json=body), 422, "invalid_request")
    before = count(api, Render)
    item = {"upload_id": presigned(api, media["speech"]), "captions": "sideways"}
    body = assert_problem(
        client.post("/v1/batches", json={"subject_id": subject_id, "items": [item]}), 422, "invalid_request"
    )
    assert body["detail"].startswith("items[0]: captions") and count(api, Render) == before

    captions = f"/v1/renders/{render_id}/captions"
    assert_problem(client.get(captions), 409, "not_ready")  # like /video
    assert_problem(client.get(captions + "?format=ass"), 422, "invalid_request")
    vtt = "WEBVTT\n\n00:00:00.000 --> 00:00:01.000\nhallo &amp; tsch\u00fcss\n"
    srt = "1\n00:00:00,000 --> 00:00:01,000\nhallo &amp; tsch\u00fcss\n"
    for fmt, text in (("vtt", vtt), ("srt", srt)):
        api.platform.storage.put_stream(
            keys.captions_key(api.tenant_id, render_id, fmt), io.BytesIO(text.encode())
        )
    video = keys.video_key(api.tenant_id, render_id)
    with api.platform.sessions() as s:
        values = dict(status="succeeded", video_key=video, captions_language="de")
        s.execute(update(Render).where(Render.id == render_id).values(**values))
        s.commit()
    assert_problem(client.get(captions), 404, "not_found")  # succeeded without captions (made "off")
    with api.platform.sessions() as s:
        key = keys.captions_key(api.tenant_id, render_id, "vtt")
        s.execute(update(Render).where(Render.id == render_id).values(captions_key=key))
        s.commit()
    doc = client.get(f"/v1/renders/{render_id}").json()
    assert doc["captions_url"].endswith(captions) and doc["language"] == "de"
    got = client.get(captions)
    assert got.status_code == 200 and got.text == vtt and got.headers["content-type"].startswith("text/vtt")
    got = client.get(captions + "?format=srt")
    assert got.status_code == 200 and got.text == srt
    assert got.headers["content-type"].startswith("application/x-subrip")
    assert 'filename="ep_1.srt"' in got.headers["content-disposition"]
    assert_problem(client.get("/v1/renders/nothing-here/captions"), 404, "not_found")


# --- the OpenAPI document ----------------------------------------------------------------------------------
# every route API.md names (path parameters renamed, the contract calls them all {id})
API_MD_ROUTES = {
    ("POST", "/v1/subjects"), ("GET", "/v1/subjects/{}"), ("GET", "/v1/subjects"),
    ("POST", "/v1/subjects/{}/cancel"), ("DELETE", "/v1/subjects/{}"),
    ("POST", "/v1/subjects/{}/renders"), ("GET", "/v1/renders/{}"), ("GET", "/v1/renders/{}/video"),
    ("GET", "/v1/renders"), ("POST", "/v1/renders/{}/cancel"),
    ("POST", "/v1/batches"), ("GET", "/v1/batches/{}"), ("POST", "/v1/uploads"),
    ("GET", "/v1/events"), ("POST", "/v1/webhooks"),
    ("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics"),
}  # fmt: skip
DOCUMENTED_STATUS = {
    ("POST", "/v1/subjects"): "202", ("POST", "/v1/subjects/{}/renders"): "202", ("POST", "/v1/batches"): "202",
    ("POST", "/v1/uploads"): "201", ("POST", "/v1/webhooks"): "201", ("DELETE", "/v1/subjects/{}"): "204",
    ("POST", "/v1/subjects/{}/cancel"): "202", ("POST", "/v1/renders/{}/cancel"): "202",
}  # fmt: skip
DOCUMENTED_QUERY = {
    ("GET", "/v1/subjects"): {"limit", "cursor", "status"},
    ("GET", "/v1/renders"): {"limit", "cursor", "status", "subject_id"},
    ("GET", "/v1/events"): {"subject_id", "render_id"},
}


def test_the_openapi_document_lists_every_route_of_api_md(api):
    doc = api.client("").get("/openapi.json").json()
    ops = {
        (method.upper(), re.sub(r"\{[^}]+\}", "{}", path)): op
        for path, methods in doc["paths"].items()
        for method, op in methods.items()
    }
    assert set(ops) >= API_MD_ROUTES, API_MD_ROUTES - set(ops)
    for route, status in DOCUMENTED_STATUS.items():
        assert status in ops[route]["responses"], (route, ops[route]["responses"])
    for route, params in DOCUMENTED_QUERY.items():
        assert params <= {p["name"] for p in ops[route].get("parameters", [])}, route
    # the bodies of the creates that read their request themselves are documented too
    for route, part in ((("POST", "/v1/subjects"), "video"), (("POST", "/v1/subjects/{}/renders"), "audio")):
        content = ops[route].get("requestBody", {}).get("content", {})
        assert "upload_id" in content.get("application/json", {}).get("schema", {}).get("properties", {}), (
            route
        )
        assert part in content.get("multipart/form-data", {}).get("schema", {}).get("properties", {}), route
    # and the key every /v1 route wants
    schemes = doc.get("components", {}).get("securitySchemes", {})
    assert any(s.get("type") == "http" and s.get("scheme", "").lower() == "bearer" for s in schemes.values())
    for (_method, path), op in ops.items():
        if path.startswith("/v1/"):
            assert op.get("security"), path
        else:
            assert not op.get("security"), path
