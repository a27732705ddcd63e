"""Deleting a subject deletes every stored file of it (API.md "Subjects": DELETE deletes its stored
files), on SQLite and PostgreSQL, with the local storage folder and with moto's S3 server: its folder,
its renders' folders, and the uploads nothing else uses (its video, its renders' speech); an upload
another subject or render uses stays, and so does the one object that files sent inline together share
while any of them is left. The deletions are recorded in the transaction that deletes the rows: when
storage refuses them at that moment they stay recorded, and ``purge_due`` (the scheduler's) completes
them later. Retention takes what is left once it expires."""

from __future__ import annotations

import io
import uuid
import wave
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from api_helpers import Api, free_port, make_api, postgres_url
from moto_server import MotoS3
from s3_helpers import undeletable, use_test_credentials
from sqlalchemy import select

from shared.db.models import StorageDeletion, Upload, utcnow
from shared.jobs import deletions, keys, lifecycle, retention
from shared.storage.s3 import S3Storage


@pytest.fixture(scope="module")
def moto(tmp_path_factory) -> Iterator[MotoS3]:
    server = MotoS3(tmp_path_factory.mktemp("moto") / "moto.log")
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request) -> Iterator[str | None]:
    if request.param == "sqlite":
        yield None  # make_api's migrated SQLite file
        return
    with postgres_url() as url:
        yield url


@pytest.fixture(params=["local", "s3"])
def api(request, database_url, tmp_path, monkeypatch) -> Iterator[Api]:
    extra = {}
    if request.param == "s3":
        use_test_credentials(monkeypatch, tmp_path)
        moto = request.getfixturevalue("moto")
        extra = dict(storage_url=f"s3://synctalk-del-{uuid.uuid4().hex[:12]}", s3_endpoint_url=moto.url)
    made = make_api(tmp_path, database_url, **extra)
    yield made
    made.close()


def wav(seconds: float, pitch: int, rate: int = 16000) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(rate)
        w.writeframes(pitch.to_bytes(2, "little") * int(seconds * rate))
    return buf.getvalue()


# --- a tenant's subjects, renders and uploads, with the files workers would have written --------------
@dataclass
class Scene:
    a: str  # the subject deleted first: two renders (an inline track, a presigned one)
    b: str  # another subject with its own video and one render (another inline track of the same call)
    c: str  # a subject learned from A's very video upload
    video_a: str  # whole uploads (subject videos)
    video_b: str
    parts: list[str]  # three tracks sent inline in one call: A's render's, B's render's, never used
    track: str  # a presigned upload, A's second render's speech
    a_renders: list[str]
    b_render: str
    bundle: str  # the one object the inline tracks share


def subject_files(tenant: str, subject: str) -> set[str]:
    base = keys.subject_prefix(tenant, subject)
    return {f"{base}/source.mp4", f"{base}/dataset/frames/000001.jpg", f"{base}/dataset/.complete",
            f"{base}/model/model.pt", f"{base}/model/.complete", keys.checkpoint_key(tenant, subject)}  # fmt: skip


def render_files(tenant: str, render: str) -> set[str]:
    return {keys.video_key(tenant, render), keys.qc_key(tenant, render)}


def video_upload(api: Api) -> str:
    """A subject video as a direct upload leaves it: a received upload and its stored object."""
    with api.platform.sessions() as s:
        upload = Upload(tenant_id=api.tenant_id, filename="talk.mp4", content_type="video/mp4", bytes=5,
                        storage_key="", status="received", expires_at=utcnow() + timedelta(hours=1))  # fmt: skip
        s.add(upload)
        s.flush()
        upload.storage_key = keys.upload_key(api.tenant_id, upload.id)
        api.platform.storage.put_bytes(upload.storage_key, b"video")
        s.commit()
        return upload.id


def presigned_track(api: Api, data: bytes) -> str:
    client = api.client()
    r = client.post(
        "/v1/uploads", json={"filename": "line.wav", "content_type": "audio/wav", "bytes": len(data)}
    )
    assert r.status_code == 201, r.text
    upload = r.json()
    if "/storage/" in upload["url"]:  # the API's own signed route
        assert client.put(upload["url"], content=data, headers=upload["headers"]).status_code == 200
    else:
        with httpx.Client(trust_env=False, timeout=30) as http:
            assert http.put(upload["url"], content=data, headers=upload["headers"]).status_code == 200
    return upload["id"]


def render(api: Api, subject: str, upload_id: str) -> str:
    r = api.client().post(f"/v1/subjects/{subject}/renders", json={"upload_id": upload_id})
    assert r.status_code == 202, r.text
    return r.json()["id"]


def build(api: Api) -> Scene:
    t, storage = api.tenant_id, api.platform.storage
    video_a, video_b = video_upload(api), video_upload(api)
    subjects = []
    with api.platform.sessions() as s:
        for name, upload_id in (("ann", video_a), ("bob", video_b), ("ann again", video_a)):
            subjects.append(
                lifecycle.create_subject(s, t, name=name, profile="tiny", upload_id=upload_id)[0].id
            )
        s.commit()
    a, b, c = subjects
    files = [("file", (f"t{i}.wav", wav(0.3, 100 + i), "audio/wav")) for i in range(3)]
    r = api.client().post("/v1/uploads/files", files=files)
    assert r.status_code == 201, r.text
    parts = [u["id"] for u in r.json()["data"]]
    track = presigned_track(api, wav(0.4, 7))
    scene = Scene(
        a=a, b=b, c=c, video_a=video_a, video_b=video_b, parts=parts, track=track,
        a_renders=[render(api, a, parts[0]), render(api, a, track)], b_render=render(api, b, parts[1]),
        bundle=_upload(api, parts[0]).storage_key,
    )  # fmt: skip
    for key in subject_files(t, a) | subject_files(t, b) | render_files(t, scene.b_render):
        storage.put_bytes(key, b"worker output")
    for render_id in scene.a_renders:
        for key in render_files(t, render_id):
            storage.put_bytes(key, b"worker output")
    return scene


def _upload(api: Api, upload_id: str) -> Upload:
    with api.platform.sessions() as s:
        return s.get(Upload, upload_id)


def stored(api: Api) -> set[str]:
    return set(api.platform.storage.list(f"tenants/{api.tenant_id}"))


def upload_ids(api: Api) -> set[str]:
    with api.platform.sessions() as s:
        return set(s.scalars(select(Upload.id)))


def recorded(api: Api) -> list[StorageDeletion]:
    with api.platform.sessions() as s:
        return list(s.scalars(select(StorageDeletion).order_by(StorageDeletion.id)))


def everything(api: Api, scene: Scene) -> set[str]:
    t = api.tenant_id
    return (
        subject_files(t, scene.a) | subject_files(t, scene.b)
        | {f for r in [*scene.a_renders, scene.b_render] for f in render_files(t, r)}
        | {keys.upload_key(t, u) for u in (scene.video_a, scene.video_b, scene.track)} | {scene.bundle}
    )  # fmt: skip


def after_a(api: Api, scene: Scene) -> set[str]:
    """What deleting A leaves: B's files, both videos (C uses A's), the inline tracks' shared object."""
    t = api.tenant_id
    return (
        subject_files(t, scene.b) | render_files(t, scene.b_render)
        | {keys.upload_key(t, scene.video_a), keys.upload_key(t, scene.video_b), scene.bundle}
    )  # fmt: skip


def later(seconds: float) -> object:
    return utcnow() + timedelta(seconds=seconds)


# --- the tests ------------------------------------------------------------------------------------------
def test_deleting_a_subject_deletes_every_stored_file_of_it_and_keeps_what_others_use(api):
    scene = build(api)
    client, sessions, storage = api.client(), api.platform.sessions, api.platform.storage
    assert stored(api) == everything(api, scene)

    assert client.delete(f"/v1/subjects/{scene.a}").status_code == 204
    assert client.get(f"/v1/subjects/{scene.a}").status_code == 404
    assert stored(api) == after_a(api, scene)
    assert upload_ids(api) == {scene.video_a, scene.video_b, scene.parts[1], scene.parts[2]}
    rows = recorded(api)
    assert {r.prefix for r in rows if r.prefix} == {
        keys.subject_prefix(api.tenant_id, scene.a), *(keys.render_prefix(api.tenant_id, r) for r in scene.a_renders)
    }  # fmt: skip
    assert {r.key for r in rows if r.key} == {keys.upload_key(api.tenant_id, scene.track)}
    assert all(r.attempts == 1 and r.last_error is None for r in rows)  # done once, swept again later

    # a worker still rendering for A publishes its video after the deletion: the second sweep takes it
    storage.put_bytes(keys.video_key(api.tenant_id, scene.a_renders[0]), b"late output")
    assert deletions.purge_due(sessions, storage, now=later(deletions.RESWEEP_AFTER_S + 1)) == len(rows)
    assert stored(api) == after_a(api, scene) and recorded(api) == []

    # B: its track is one of the three sent together; the one never used keeps their object alive
    assert client.delete(f"/v1/subjects/{scene.b}").status_code == 204
    assert stored(api) == {keys.upload_key(api.tenant_id, scene.video_a), scene.bundle}
    assert client.delete(f"/v1/subjects/{scene.c}").status_code == 204  # the last user of A's video
    assert stored(api) == {scene.bundle}
    assert upload_ids(api) == {scene.parts[2]}

    # once the unused track expired, retention deletes it, and with the last of them their object
    expired = later(api.settings.upload_expiry_s + 60)
    assert retention.prune(sessions, api.settings, now=expired)["uploads"] == 1
    deletions.purge_due(sessions, storage, now=expired + timedelta(seconds=deletions.RESWEEP_AFTER_S))
    assert stored(api) == set() and upload_ids(api) == set() and recorded(api) == []


@contextmanager
def storage_refusing(api: Api) -> Iterator[None]:
    """Storage refuses every deletion while the block runs: the local folder cannot be changed; S3 is
    unreachable (the API's client points at a closed port)."""
    storage = api.platform.storage
    if isinstance(storage, S3Storage):
        api.platform.storage = S3Storage(
            storage.bucket, "", f"http://127.0.0.1:{free_port()}", max_attempts=1, connect_timeout=1
        )
        try:
            yield
        finally:
            api.platform.storage = storage
        return
    with undeletable(Path(storage.root) / "tenants" / api.tenant_id):
        yield


def test_a_deletion_storage_refuses_stays_recorded_and_the_scheduler_completes_it(api):
    scene = build(api)
    sessions, storage = api.platform.sessions, api.platform.storage
    with storage_refusing(api):
        assert api.client().delete(f"/v1/subjects/{scene.a}").status_code == 204  # the rows are gone
    assert api.client().get(f"/v1/subjects/{scene.a}").status_code == 404
    assert stored(api) == everything(api, scene)  # nothing could be deleted yet
    rows = recorded(api)
    assert len(rows) == 4  # A's folder, its two renders' folders, its presigned track
    assert all(r.attempts == 1 and r.last_error for r in rows), [(r.attempts, r.last_error) for r in rows]

    assert deletions.purge_due(sessions, storage) == 0  # not due again before its backoff
    assert deletions.purge_due(sessions, storage, now=later(60)) == 4  # storage is back
    assert stored(api) == after_a(api, scene)
    assert deletions.purge_due(sessions, storage, now=later(deletions.RESWEEP_AFTER_S + 1)) == 4
    assert recorded(api) == []
