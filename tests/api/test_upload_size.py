"""Uploads are bound to the size they announced (API.md "Uploads"), on the real parts: moto's S3 server
on loopback (and the local storage folder), the API in-process, a byte-counting TCP relay between the
API's storage client and S3.

- a presigned S3 PUT signs the exact Content-Length, and says so in the headers the client must send;
- a stored file larger than announced is refused (413 ``file_too_large``) from its size alone: the API
  reads no more than the header, deletes the object and marks the upload refused; a smaller one stays
  ``upload_incomplete`` (the client may PUT it again);
- a worker refuses an upload whose stored size is not the upload's, before downloading it."""

from __future__ import annotations

import hashlib
import hmac
import io
import uuid
import wave
from collections.abc import Iterator
from urllib.parse import parse_qsl, quote, urlsplit

import boto3
import httpx
import pytest
from api_helpers import Api, make_api
from botocore.config import Config
from moto_server import MotoS3
from s3_helpers import AWS_TEST_ENV, use_test_credentials
from sqlalchemy import select
from tcp_proxy import TcpProxy

from shared.db.models import Subject, Upload
from shared.jobs import keys
from shared.jobs.uploads import fetch_upload
from shared.storage import LocalStorage, StorageError
from shared.storage.s3 import S3Storage

MiB = 1 << 20
PROBLEM = "application/problem+json"


@pytest.fixture(scope="module")
def moto(tmp_path_factory) -> Iterator[MotoS3]:
    server = MotoS3(tmp_path_factory.mktemp("moto") / "moto.log")
    yield server
    server.stop()


@pytest.fixture
def relay(moto: MotoS3) -> Iterator[TcpProxy]:
    proxy = TcpProxy("127.0.0.1", int(moto.url.rsplit(":", 1)[1]), name="s3").start()
    yield proxy
    proxy.stop()


def bucket() -> str:
    return f"synctalk-size-{uuid.uuid4().hex[:12]}"


def raw_client(endpoint: str):
    """A boto3 client of the test's own, straight to moto (to look at what is really stored)."""
    return boto3.session.Session().client(
        "s3", endpoint_url=endpoint,
        config=Config(region_name="us-east-1", signature_version="s3v4", s3={"addressing_style": "path"}),
    )  # fmt: skip


def wav(seconds: float = 0.5, rate: int = 16000) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        (
            w.setnchannels(1),
            w.setsampwidth(2),
            w.setframerate(rate),
            w.writeframes(b"\x10\x00" * int(seconds * rate)),
        )
    return buf.getvalue()


def assert_problem(r, status: int, code: str) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(PROBLEM)
    body = r.json()
    assert body["code"] == code and len(body["detail"]) > 15, body
    return body


# --- (a) the presigned PUT signs the exact length ------------------------------------------------------
def s3_accepts(url: str, headers: dict[str, str], secret: str) -> bool:
    """Whether S3 would take a PUT to the presigned ``url`` with these ``headers``: its SigV4 query
    signature checked as S3 checks it (the canonical request rebuilt from the request as sent: every
    header the URL signed, with the value the request carries)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    given = dict(query).pop("X-Amz-Signature")
    params = dict(query)
    signed = params["X-Amz-SignedHeaders"].split(";")
    sent = {k.lower(): v.strip() for k, v in headers.items()} | {"host": parts.netloc}

    def enc(s: str) -> str:
        return quote(s, safe="-_.~")

    canonical = "\n".join([
        "PUT", parts.path,
        "&".join(f"{enc(k)}={enc(v)}" for k, v in sorted(query) if k != "X-Amz-Signature"),
        "".join(f"{h}:{sent.get(h, '')}\n" for h in signed), ";".join(signed), "UNSIGNED-PAYLOAD",
    ])  # fmt: skip
    scope = params["X-Amz-Credential"].split("/", 1)[1]
    to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", params["X-Amz-Date"], scope, hashlib.sha256(canonical.encode()).hexdigest()]
    )
    key = f"AWS4{secret}".encode()
    for part in scope.split("/"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return hmac.compare_digest(hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest(), given)


def test_an_s3_presigned_put_signs_the_exact_length_it_announced(moto, monkeypatch, tmp_path):
    """S3 checks every signed header against the request: with Content-Length signed, a body of any other
    length is refused (SignatureDoesNotMatch). moto's server does not check presigned signatures, so
    the check is rebuilt here the way S3 does it; the PUT the client is told to send works on moto."""
    use_test_credentials(monkeypatch, tmp_path)
    storage = S3Storage(bucket(), "", moto.url)
    body = wav()
    put = storage.presign_put("tenants/t/uploads/u1", "audio/wav", 300, max_bytes=len(body))
    assert put.headers == {"Content-Type": "audio/wav", "Content-Length": str(len(body))}
    secret = AWS_TEST_ENV["AWS_SECRET_ACCESS_KEY"]
    assert s3_accepts(put.url, put.headers, secret)  # the request the client is told to send
    for other in (len(body) + 1, 50 * MiB, len(body) - 1):
        assert not s3_accepts(put.url, {**put.headers, "Content-Length": str(other)}, secret), other
    assert not s3_accepts(put.url, {"Content-Type": "audio/wav"}, secret)  # no length: refused too
    with httpx.Client(trust_env=False, timeout=30) as http:
        assert http.put(put.url, content=body, headers=put.headers).status_code == 200
        with pytest.raises(Exception, match="Content-Length"):  # one sending these headers cannot send more
            http.put(put.url, content=body + b"\0" * 1000, headers=put.headers)
    assert storage.read_bytes("tenants/t/uploads/u1") == body


# --- (b) the API refuses a stored file larger than announced, reading only its header -----------------
@pytest.fixture
def s3_api(moto, relay, monkeypatch, tmp_path) -> Iterator[tuple[Api, TcpProxy]]:
    """The API on S3: its storage client goes through the counting relay; clients' presigned URLs
    point at moto itself."""
    use_test_credentials(monkeypatch, tmp_path)
    api = make_api(
        tmp_path, storage_url=f"s3://{bucket()}", s3_endpoint_url=relay.url, s3_public_endpoint_url=moto.url,
        min_train_seconds=1, default_profile="tiny",
    )  # fmt: skip
    yield api, relay
    api.close()


def new_upload(api: Api, announced: int, filename: str = "talk.mp4") -> dict:
    r = api.client().post(
        "/v1/uploads", json={"filename": filename, "content_type": "video/mp4", "bytes": announced}
    )
    assert r.status_code == 201, r.text
    return r.json()


def test_a_presigned_upload_larger_than_announced_is_refused_from_its_size_alone(s3_api):
    """A client that ignores the signed length (S3 would refuse it; moto lets it through) PUTs 8 MiB for
    an upload announced as 1000 bytes: 413, and the API read no more than the header's range."""
    api, relay = s3_api
    upload = new_upload(api, 1000)
    big = b"\0\0\0\x18ftypmp42" + bytes(8 * MiB)
    headers = {"Content-Type": upload["headers"]["Content-Type"]}  # its own length, not the signed one
    with httpx.Client(trust_env=False, timeout=60) as http:
        assert http.put(upload["url"], content=big, headers=headers).status_code == 200
    key = keys.upload_key(api.tenant_id, upload["id"])
    s3 = raw_client(str(api.settings.s3_public_endpoint_url))
    storage_bucket = api.platform.storage.bucket
    assert s3.head_object(Bucket=storage_bucket, Key=key)["ContentLength"] == len(big)

    relay.reset_counters()
    client = api.client()
    r = client.post("/v1/subjects", json={"upload_id": upload["id"]})
    assert relay.bytes_to_client < 256 * 1024, (
        f"the API read {relay.bytes_to_client} bytes of an 8 MiB object"
    )
    body = assert_problem(r, 413, "file_too_large")
    assert str(len(big)) in body["detail"] and "1000" in body["detail"]
    assert "Contents" not in s3.list_objects_v2(Bucket=storage_bucket, Prefix=key)  # deleted at once
    assert client.get(f"/v1/uploads/{upload['id']}").json()["status"] == "refused"
    assert_problem(client.post("/v1/subjects", json={"upload_id": upload["id"]}), 422, "upload_refused")
    with api.platform.sessions() as s:
        assert s.scalar(select(Subject.id)) is None
    assert upload["headers"]["Content-Length"] == "1000"  # what S3 itself would have enforced


def test_the_python_client_sends_what_the_signed_url_asks(s3_api, tmp_path):
    """services/client PUTs with the upload's headers (the signed Content-Length included): a render made
    through it on the S3 stack is accepted."""
    from api_helpers import served

    from services.client import Client

    api, _ = s3_api
    track = tmp_path / "line.wav"
    track.write_bytes(wav(0.5))
    subject, _ = _ready_subject(api)
    with served(api.app) as base:
        client = Client(base, api.key)
        try:
            made = client.render_file(subject, track)
        finally:
            client.close()
    assert made["status"] == "queued" and made["subject_id"] == subject


def test_a_presigned_upload_smaller_than_announced_stays_incomplete(s3_api):
    api, _ = s3_api
    upload = new_upload(api, 5000)
    with httpx.Client(trust_env=False, timeout=30) as http:
        r = http.put(upload["url"], content=bytes(100), headers={"Content-Type": "video/mp4"})
        assert r.status_code == 200
    client = api.client()
    assert_problem(client.post("/v1/subjects", json={"upload_id": upload["id"]}), 422, "upload_incomplete")
    assert client.get(f"/v1/uploads/{upload['id']}").json()["status"] == "pending"  # may be PUT again
    assert api.platform.storage.exists(keys.upload_key(api.tenant_id, upload["id"]))


def test_a_stored_file_larger_than_announced_is_refused_on_the_local_folder_too(tmp_path):
    """The local signed route refuses a longer body already; a file that got there another way (written
    beside the API) is refused the same way."""
    api = make_api(tmp_path, min_train_seconds=1, default_profile="tiny")
    try:
        upload = new_upload(api, 1000, "speech.wav")
        key = keys.upload_key(api.tenant_id, upload["id"])
        api.platform.storage.put_bytes(key, wav(1.0))  # 32 KB
        subject, _ = _ready_subject(api)
        r = api.client().post(f"/v1/subjects/{subject}/renders", json={"upload_id": upload["id"]})
        assert_problem(r, 413, "file_too_large")
        assert not api.platform.storage.exists(key)
        with api.platform.sessions() as s:
            assert s.get(Upload, upload["id"]).status == "refused"
    finally:
        api.close()


def _ready_subject(api: Api):
    from sqlalchemy import update

    from shared.jobs import lifecycle

    with api.platform.sessions() as s:
        subject, nxt = lifecycle.create_subject(s, api.tenant_id, name="anna", profile="tiny")
        s.flush()
        s.execute(update(Subject).where(Subject.id == subject.id).values(status="succeeded"))
        s.commit()
        return subject.id, nxt


# --- (c) a worker refuses a stored file whose size is not the upload's, before downloading it ---------
@pytest.fixture(params=["local", "s3"])
def worker_storage(request, tmp_path, monkeypatch) -> Iterator[tuple[object, TcpProxy | None]]:
    if request.param == "local":
        yield LocalStorage(tmp_path / "storage", "secret", "http://api.test"), None
        return
    use_test_credentials(monkeypatch, tmp_path)
    relay = request.getfixturevalue("relay")
    yield S3Storage(bucket(), "", relay.url), relay


def test_a_worker_refuses_an_upload_whose_stored_size_changed_before_downloading_it(worker_storage, tmp_path):
    storage, relay = worker_storage
    key = "tenants/t/uploads/u1"
    storage.put_bytes(key, bytes(4 * MiB))
    upload = Upload(id="u1", tenant_id="t", filename="talk.mp4", content_type="video/mp4", bytes=1000,
                    storage_key=key, status="received")  # fmt: skip
    if relay is not None:
        relay.reset_counters()
    with pytest.raises(StorageError) as err:  # typed: UploadChangedError, a permanent failure
        fetch_upload(storage, upload, tmp_path / "got" / "upload")
    assert err.value.code == "upload_changed" and not err.value.transient
    assert "4194304" in str(err.value) and "1000" in str(err.value)
    assert not (tmp_path / "got" / "upload").exists()
    if relay is not None:
        assert relay.bytes_to_client < 64 * 1024, (
            f"{relay.bytes_to_client} bytes downloaded before the refusal"
        )

    upload.bytes = 4 * MiB  # the size it was checked with: fetched as before
    assert fetch_upload(storage, upload, tmp_path / "ok").stat().st_size == 4 * MiB
    part = Upload(id="u2", tenant_id="t", filename="a.wav", content_type="audio/wav", bytes=1000,
                  storage_key=key, part_offset=2000, status="received")  # fmt: skip
    assert fetch_upload(storage, part, tmp_path / "part").stat().st_size == 1000  # a part of a bundle
