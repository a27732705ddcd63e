"""Storage: both backends (a local folder, S3 through moto's server on loopback) keep one contract.

Real parts only: real files, a real S3 server over HTTP, real signed URLs. Where a failure must happen
midway (a client that goes away), the source stream itself fails.
"""

from __future__ import annotations

import io
import json
import os
import time
import tracemalloc
from pathlib import Path

import httpx
import pytest
from storage_helpers import (
    PUBLIC_URL,
    SECRET,
    ChunkStream,
    FailingStream,
    free_port,
    new_bucket,
    raw_objects,
    sha256_file,
    write_random_file,
)

from shared.settings import Settings
from shared.storage import (
    LocalStorage,
    NotFoundError,
    SignatureError,
    SignatureExpiredError,
    Storage,
    StorageError,
    StorageKeyError,
    TooLargeError,
    signing,
    storage_from_settings,
)
from shared.storage.s3 import S3Storage

MiB = 1 << 20


# --- round trips ---------------------------------------------------------------------------------------
def test_file_stream_and_bytes_round_trip(storage: Storage, tmp_path: Path) -> None:
    src = write_random_file(tmp_path / "src.bin", 1)
    storage.put_file("t/a/file.bin", src)
    assert storage.put_stream("t/a/stream.bin", io.BytesIO(b"s" * 1000)) == 1000
    storage.put_bytes("t/a/doc.json", b'{"ok": true}', content_type="application/json")

    assert storage.size("t/a/file.bin") == MiB and storage.size("t/a/stream.bin") == 1000
    assert storage.exists("t/a/doc.json") and not storage.exists("t/a/missing")
    assert json.loads(storage.read_bytes("t/a/doc.json")) == {"ok": True}
    out = storage.get_file("t/a/file.bin", tmp_path / "deep" / "out.bin")
    assert out == tmp_path / "deep" / "out.bin" and sha256_file(out) == sha256_file(src)
    with storage.open_read("t/a/stream.bin") as fh:
        assert fh.read(10) == b"s" * 10 and len(fh.read()) == 990

    storage.put_bytes("t/a/doc.json", b"[]")  # replacing is atomic too
    assert storage.read_bytes("t/a/doc.json") == b"[]"
    for missing in (
        lambda: storage.size("t/nope"),
        lambda: storage.read_bytes("t/nope"),
        lambda: storage.get_file("t/nope", tmp_path / "x"),
        lambda: storage.open_read("t/nope").__enter__(),
    ):
        with pytest.raises(NotFoundError) as err:
            missing()
        assert "t/nope" not in str(err.value)  # messages do not carry keys
    assert not (tmp_path / "x").exists()


def test_read_head_gives_the_first_bytes_and_the_whole_size(storage: Storage) -> None:
    data = bytes(range(256)) * 40  # 10,240 bytes
    storage.put_bytes("t/h/track.wav", data)
    storage.put_bytes("t/h/empty", b"")
    assert storage.read_head("t/h/track.wav", 100) == (data[:100], len(data))
    assert storage.read_head("t/h/track.wav", 1 << 20) == (data, len(data))  # more than there is
    assert storage.read_head("t/h/empty", 64) == (b"", 0)
    with pytest.raises(NotFoundError):
        storage.read_head("t/h/missing", 64)


def test_s3_small_bytes_are_stored_in_one_request(s3_storage: S3Storage) -> None:
    s3_storage.put_bytes("t/one/first.json", b"{}")  # the bucket exists from here on
    calls: list[str] = []
    s3_storage._client.meta.events.register("before-call.s3", lambda model, **_: calls.append(model.name))
    s3_storage.put_bytes("t/one/track.wav", b"RIFF" + bytes(40_000))
    assert calls == ["PutObject"]  # atomic as it is: no temporary key, copy and delete
    assert s3_storage.read_head("t/one/track.wav", 4) == (b"RIFF", 40_004)
    assert raw_objects(s3_storage) == ["t/one/first.json", "t/one/track.wav"]


def test_get_range_fetches_one_part_of_a_shared_object(storage: Storage, tmp_path: Path) -> None:
    data = bytes(range(256)) * 9000  # 2.2 MB: parts that span read chunks
    storage.put_bytes("t/r/bundle", data)
    for start, length in ((0, 10), (1000, 1_500_000), (len(data) - 7, 7)):
        got = storage.get_range("t/r/bundle", start, length, tmp_path / "p" / f"{start}.bin")
        assert got.read_bytes() == data[start : start + length]
    with pytest.raises(StorageError):  # past the end: an error, and no file left
        storage.get_range("t/r/bundle", len(data) - 5, 10, tmp_path / "short.bin")
    assert not (tmp_path / "short.bin").exists()
    with pytest.raises(NotFoundError):
        storage.get_range("t/r/missing", 0, 10, tmp_path / "missing.bin")
    with pytest.raises(ValueError):
        storage.get_range("t/r/bundle", 0, 0, tmp_path / "empty.bin")


def test_list_delete_and_delete_prefix(storage: Storage) -> None:
    for key in ("a/1.txt", "a/2.txt", "a/sub/3.txt", "ab/4.txt", "b.txt"):
        storage.put_bytes(key, key.encode())
    assert sorted(storage.list("")) == ["a/1.txt", "a/2.txt", "a/sub/3.txt", "ab/4.txt", "b.txt"]
    assert sorted(storage.list("a")) == ["a/1.txt", "a/2.txt", "a/sub/3.txt"]  # a folder: not "ab/"
    assert sorted(storage.list("a/")) == sorted(storage.list("a"))
    assert list(storage.list("nothing/here")) == []

    storage.delete("a/1.txt")
    storage.delete("a/1.txt")  # missing is fine
    assert not storage.exists("a/1.txt")
    assert storage.delete_prefix("a") == 2
    assert sorted(storage.list("")) == ["ab/4.txt", "b.txt"]
    assert storage.delete_prefix("a") == 0
    with pytest.raises(StorageKeyError):
        storage.delete_prefix("")  # never "everything" by accident


def test_s3_listing_and_prefix_deletion_page_through(s3_storage: S3Storage) -> None:
    s3_storage.page_size = 2  # several pages (and DeleteObjects batches) from a handful of keys
    keys = [f"p/{i:02d}.txt" for i in range(7)]
    for key in keys:
        s3_storage.put_bytes(key, b"x")
    assert list(s3_storage.list("p")) == keys
    assert s3_storage.delete_prefix("p") == 7
    assert raw_objects(s3_storage) == []


def test_s3_prefix_and_content_type(moto_endpoint: str, aws_env: None, tmp_path: Path) -> None:
    storage = S3Storage(new_bucket(), "env/prod", moto_endpoint, "us-east-1")
    storage.put_bytes("r/video.mp4", b"\0" * 10)  # type guessed from the name
    storage.put_file("r/qc", write_random_file(tmp_path / "qc", 1), content_type="application/json")
    assert raw_objects(storage) == ["env/prod/r/qc", "env/prod/r/video.mp4"]
    assert list(storage.list("")) == ["r/qc", "r/video.mp4"]
    head = storage._client.head_object
    assert head(Bucket=storage.bucket, Key="env/prod/r/video.mp4")["ContentType"] == "video/mp4"
    assert head(Bucket=storage.bucket, Key="env/prod/r/qc")["ContentType"] == "application/json"


def test_s3_managed_copy_publishes_too(s3_storage: S3Storage, tmp_path: Path) -> None:
    s3_storage.copy_threshold = 0  # take the >5 GB path (multipart copy) with a small file
    src = write_random_file(tmp_path / "m.mp4", 6)
    s3_storage.put_file("big/m.mp4", src)
    assert sha256_file(s3_storage.get_file("big/m.mp4", tmp_path / "back.mp4")) == sha256_file(src)
    assert (
        s3_storage._client.head_object(Bucket=s3_storage.bucket, Key="big/m.mp4")["ContentType"]
        == "video/mp4"
    )
    assert raw_objects(s3_storage) == ["big/m.mp4"]


# --- folders: upload with a marker, download into a cache -----------------------------------------------
def test_upload_dir_and_sync_dir_with_marker_and_cache(storage: Storage, tmp_path: Path) -> None:
    src = tmp_path / "dataset"
    (src / "frames").mkdir(parents=True)
    for i in range(3):
        (src / "frames" / f"{i}.jpg").write_bytes(bytes([i]) * (100 + i))
    (src / "meta.json").write_text("{}")
    (src / ("meta.json.partial-" + "0" * 32)).write_text("a leftover download")  # never uploaded

    report = storage.upload_dir(src, "s/1/dataset")
    assert (report.transferred, report.bytes) == (4, 100 + 101 + 102 + 2)
    marker = json.loads(storage.read_bytes("s/1/dataset/.complete"))
    assert marker["files"] == {"frames/0.jpg": 100, "frames/1.jpg": 101, "frames/2.jpg": 102, "meta.json": 2}
    assert len(list(storage.list("s/1/dataset"))) == 5

    cache = tmp_path / "cache"
    first = storage.sync_dir("s/1/dataset", cache)
    assert (first.transferred, first.skipped) == (4, 0)
    assert (cache / "frames" / "2.jpg").read_bytes() == bytes([2]) * 102 and (cache / ".complete").is_file()
    again = storage.sync_dir("s/1/dataset", cache)
    assert (again.transferred, again.skipped) == (0, 4)  # the local cache is used
    (cache / "frames" / "1.jpg").write_bytes(b"truncated")
    fixed = storage.sync_dir("s/1/dataset", cache)
    assert (fixed.transferred, fixed.skipped) == (1, 3) and (cache / "frames" / "1.jpg").stat().st_size == 101


def test_a_folder_is_incomplete_until_its_marker_is_written(
    storage: Storage, tmp_path: Path, monkeypatch
) -> None:
    src = tmp_path / "model"
    src.mkdir()
    (src / "a.pt").write_bytes(b"a" * 10)
    (src / "b.pt").write_bytes(b"b" * 10)
    storage.upload_dir(src, "s/2/model")

    put_file = storage.put_file

    def fail_on_b(key: str, path: Path, **kw) -> None:  # the worker dies halfway through a re-upload
        if key.endswith("b.pt"):
            raise OSError("worker lost")
        put_file(key, path, **kw)

    monkeypatch.setattr(storage, "put_file", fail_on_b)
    with pytest.raises(OSError):
        storage.upload_dir(src, "s/2/model")
    assert not storage.exists("s/2/model/.complete")  # the old marker went first
    with pytest.raises(NotFoundError, match="not finished"):
        storage.sync_dir("s/2/model", tmp_path / "cache")
    assert not (tmp_path / "cache" / ".complete").exists()


# --- atomicity -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fail_after", [1000, 12 * MiB], ids=["small", "multipart"])
def test_a_put_that_fails_midway_leaves_nothing(storage: Storage, fail_after: int) -> None:
    with pytest.raises(ConnectionResetError):
        storage.put_stream("u/1/video.mp4", FailingStream(fail_after))
    assert not storage.exists("u/1/video.mp4")
    assert list(storage.list("")) == []
    assert raw_objects(storage) == []  # no temporary object, no unfinished multipart upload


def test_a_failed_put_keeps_the_previous_object(storage: Storage) -> None:
    storage.put_bytes("u/2/qc.json", b"old")
    with pytest.raises(ConnectionResetError):
        storage.put_stream("u/2/qc.json", FailingStream(10))
    assert storage.read_bytes("u/2/qc.json") == b"old"
    with pytest.raises(StorageError):
        storage.put_file("u/2/qc.json", Path("/nonexistent/source"))
    assert raw_objects(storage) == ["u/2/qc.json"]


def test_a_get_file_that_fails_leaves_no_file(storage: Storage, tmp_path: Path, monkeypatch) -> None:
    storage.put_bytes("g/data.bin", b"d" * (3 * MiB))
    target = tmp_path / "cache" / "data.bin"
    real_open = storage.open_read

    class Broken:  # the connection drops after the first chunk
        def __init__(self, inner) -> None:
            self.inner, self.reads = inner, 0

        def read(self, n: int = -1) -> bytes:
            self.reads += 1
            if self.reads > 1:
                raise ConnectionResetError("connection dropped")
            return self.inner.read(n)

    class BrokenOpen:
        def __init__(self, key: str) -> None:
            self.cm = real_open(key)

        def __enter__(self):
            return Broken(self.cm.__enter__())

        def __exit__(self, *exc) -> None:
            self.cm.__exit__(*exc)

    monkeypatch.setattr(storage, "open_read", BrokenOpen)
    with pytest.raises(ConnectionResetError):
        storage.get_file("g/data.bin", target)
    assert not target.exists() and list(target.parent.iterdir()) == []
    with pytest.raises(NotFoundError):
        storage.get_file("g/missing.bin", target)
    assert list(target.parent.iterdir()) == []


# --- streaming: memory stays far below the file's size ----------------------------------------------------
def test_a_64_mb_file_streams_in_both_directions(storage: Storage, tmp_path: Path) -> None:
    src = write_random_file(tmp_path / "big.mp4", 64)
    tracemalloc.start()
    try:
        storage.put_file("big/video.mp4", src)
        storage.get_file("big/video.mp4", tmp_path / "back.mp4")
        file_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        assert storage.put_stream("big/stream.bin", ChunkStream(64 * MiB)) == 64 * MiB
        with storage.open_read("big/stream.bin") as fh:
            while fh.read(MiB):
                pass
        stream_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert sha256_file(tmp_path / "back.mp4") == sha256_file(src)
    assert storage.size("big/stream.bin") == 64 * MiB
    assert file_peak < 16 * MiB, f"file put/get peaked at {file_peak / MiB:.1f} MiB"
    # A stream cannot be re-read, so S3 holds a few 5 MiB parts of it in memory (never more).
    assert stream_peak < 32 * MiB, f"stream put/read peaked at {stream_peak / MiB:.1f} MiB"


# --- signed URLs ------------------------------------------------------------------------------------------
def test_s3_presigned_put_and_get_over_http(s3_storage: S3Storage) -> None:
    body = os.urandom(MiB)
    put = s3_storage.presign_put("up/1/source.mp4", "video/mp4", 300, max_bytes=MiB)  # the exact size
    assert put.method == "PUT" and put.headers == {"Content-Type": "video/mp4", "Content-Length": str(MiB)}
    assert 290 < (put.expires_at.timestamp() - time.time()) <= 300
    with httpx.Client(trust_env=False, timeout=30) as http:
        assert http.put(put.url, content=body, headers=put.headers).status_code == 200
        assert s3_storage.read_bytes("up/1/source.mp4") == body  # the bucket was created for the upload

        get = s3_storage.presign_get("up/1/source.mp4", 60, filename="Talk take 2.mp4")
        answer = http.get(get.url)
    assert answer.status_code == 200 and answer.content == body
    assert answer.headers["content-type"] == "video/mp4"
    assert answer.headers["content-disposition"].startswith('attachment; filename="Talk take 2.mp4"')


def _query(url: str) -> tuple[str, dict[str, str]]:
    parsed = httpx.URL(url)
    assert parsed.path.startswith("/storage/")
    return parsed.path.removeprefix("/storage/"), dict(parsed.params)


def test_local_signed_put_then_get(local_storage: LocalStorage) -> None:
    put = local_storage.presign_put("up/2/speech.wav", "audio/wav", max_bytes=5000)
    assert put.url.startswith(f"{PUBLIC_URL}/storage/up/2/speech.wav?") and put.headers == {
        "Content-Type": "audio/wav"
    }
    key, query = _query(put.url)
    params = local_storage.verify_signed("PUT", key, query, content_type="audio/wav")
    assert (params.key, params.max_bytes, params.content_type) == ("up/2/speech.wav", 5000, "audio/wav")
    chunks = iter([b"RIFF", b"\1" * 996])  # an HTTP body arrives as chunks
    assert local_storage.receive(key, chunks, "audio/wav", params.max_bytes) == 1000

    get = local_storage.presign_get("up/2/speech.wav", filename="línea 1.wav")
    key, query = _query(get.url)
    params = local_storage.verify_signed("GET", key, query)
    headers = local_storage.response_headers(key, params)
    assert headers["Content-Type"] in ("audio/wav", "audio/x-wav") and headers["Content-Length"] == "1000"
    assert headers["Content-Disposition"] == (
        "attachment; filename=\"l_nea 1.wav\"; filename*=UTF-8''l%C3%ADnea%201.wav"
    )
    with local_storage.open_read(key) as fh:
        assert fh.read() == b"RIFF" + b"\1" * 996


def test_local_signatures_refused(local_storage: LocalStorage) -> None:
    put = local_storage.presign_put("up/3/a.mp4", "video/mp4", max_bytes=100)
    key, query = _query(put.url)

    def refused(method: str = "PUT", k: str = key, content_type: str | None = "video/mp4", **changes: str):
        with pytest.raises(SignatureError) as err:
            local_storage.verify_signed(method, k, {**query, **changes}, content_type=content_type)
        return err.value

    assert refused(sig="0" * 64).code == "storage_signature"
    assert refused(k="up/3/b.mp4")  # another key
    assert refused(expires=str(int(query["expires"]) + 3600))  # a longer life
    assert refused(max_bytes="1000000")  # a bigger upload
    assert refused(content_type="text/html")  # another type than signed
    assert refused(method="GET")  # a PUT URL used to read
    assert refused(sig="")
    with pytest.raises(SignatureError):
        local_storage.verify_signed("PUT", key, {"method": "PUT"}, content_type="video/mp4")
    other = LocalStorage(local_storage.root, "another-secret", PUBLIC_URL)
    with pytest.raises(SignatureError):
        other.verify_signed("PUT", key, query, content_type="video/mp4")

    get = local_storage.presign_get("up/3/a.mp4", expires_s=1)
    key, query = _query(get.url)
    local_storage.verify_signed("GET", key, query)  # fine now ...
    with pytest.raises(SignatureExpiredError) as err:  # ... and refused once it has expired
        signing.parse_and_verify(SECRET, "GET", key, query, now=time.time() + 5)
    assert err.value.code == "storage_signature_expired"


def test_local_receive_refuses_more_than_allowed(local_storage: LocalStorage) -> None:
    with pytest.raises(TooLargeError) as err:
        local_storage.receive("up/4/big.mp4", io.BytesIO(b"x" * 3 * MiB), "video/mp4", max_bytes=MiB)
    assert err.value.code == "file_too_large"
    assert not local_storage.exists("up/4/big.mp4") and raw_objects(local_storage) == []
    assert local_storage.receive("up/4/big.mp4", io.BytesIO(b"x" * MiB), "video/mp4", max_bytes=MiB) == MiB


# --- keys --------------------------------------------------------------------------------------------------
BAD_KEYS = [
    "../x",
    "a/../../x",
    "/abs",
    "a//b",
    "a/./b",
    ".",
    "a\\b",
    "a\0b",
    "x" * 600,
    "",
    "a/",
    "é.mp4",
    "a b",
    "a/b.partial-" + "f" * 32,
    "y" * 201,
]


@pytest.mark.parametrize("key", BAD_KEYS, ids=range(len(BAD_KEYS)))
def test_malformed_keys_are_refused(storage: Storage, key: str, tmp_path: Path) -> None:
    for call in (
        lambda: storage.put_bytes(key, b"x"),
        lambda: storage.read_bytes(key),
        lambda: storage.exists(key),
        lambda: storage.delete(key),
        lambda: storage.get_file(key, tmp_path / "out"),
        lambda: storage.presign_get(key),
        lambda: storage.presign_put(key, "video/mp4"),
    ):
        with pytest.raises(StorageKeyError) as err:
            call()
        assert err.value.code == "storage_key"
    assert raw_objects(storage) == []


def test_local_symlinks_out_of_root_are_not_followed(local_storage: LocalStorage, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("do not serve")
    local_storage.put_bytes("t/ok.txt", b"ok")
    (local_storage.root / "t" / "escape").symlink_to(outside, target_is_directory=True)
    (local_storage.root / "t" / "leak.txt").symlink_to(outside / "secret.txt")

    for key in ("t/escape/secret.txt", "t/leak.txt"):
        with pytest.raises(StorageKeyError):
            local_storage.read_bytes(key)
    with pytest.raises(StorageKeyError):
        local_storage.put_bytes("t/escape/new.txt", b"x")
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]
    assert list(local_storage.list("t")) == ["t/ok.txt"]
    assert local_storage.delete_prefix("t") == 3  # the links themselves go, never what they point at
    assert (outside / "secret.txt").read_text() == "do not serve"


# --- construction and readiness ----------------------------------------------------------------------------
def test_storage_from_settings(tmp_path: Path, moto_endpoint: str, monkeypatch) -> None:
    for name in ("STORAGE_URL", "PUBLIC_URL", "S3_ENDPOINT_URL", "S3_REGION", "SECRET_KEY"):
        monkeypatch.delenv(f"SYNCTALK_{name}", raising=False)
    local = storage_from_settings(
        Settings(data_dir=tmp_path, secret_key="k", public_url="https://dub.example")
    )
    assert isinstance(local, LocalStorage) and local.root == tmp_path / "storage"
    assert local.presign_get("a.mp4").url.startswith("https://dub.example/storage/a.mp4?")
    assert storage_from_settings(Settings(storage_url=f"file://{tmp_path}/s")).root == tmp_path / "s"

    s3 = storage_from_settings(
        Settings(
            storage_url="s3://media-bucket/env/prod/", s3_endpoint_url=moto_endpoint, s3_region="eu-west-1"
        )
    )
    assert isinstance(s3, S3Storage)
    assert (s3.bucket, s3.prefix, s3.endpoint_url, s3.region) == (
        "media-bucket",
        "env/prod",
        moto_endpoint,
        "eu-west-1",
    )

    for url in (
        "ftp://host/x",
        "file://relative/path",
        "s3://",
        "s3://AKIA:secret@bucket",
        "s3://b/../x",
        "bucket",
    ):
        with pytest.raises(StorageError) as err:
            storage_from_settings(Settings(storage_url=url))
        assert "secret" not in str(err.value)


def test_check_passes_on_usable_storage(storage: Storage) -> None:
    storage.check()
    storage.check()


def test_local_check_refuses_an_unusable_folder(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(StorageError, match="cannot be created"):
        LocalStorage(tmp_path / "file" / "storage", SECRET, PUBLIC_URL).check()


def test_s3_check_fails_fast_on_an_unreachable_endpoint(aws_env: None) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"  # a closed port
    storage = S3Storage(
        new_bucket(), "", endpoint, "us-east-1", connect_timeout=1, read_timeout=1, max_attempts=1
    )
    started = time.monotonic()
    with pytest.raises(StorageError, match="unreachable") as err:
        storage.check()
    assert time.monotonic() - started < 5
    assert endpoint in str(err.value) and "testing-secret" not in str(err.value)


def test_s3_bucket_creation_tolerates_another_creator(moto_endpoint: str, aws_env: None) -> None:
    bucket = new_bucket()
    first = S3Storage(bucket, "", moto_endpoint, "eu-west-1")
    second = S3Storage(bucket, "", moto_endpoint, "eu-west-1")
    first.put_bytes("x.json", b"1")
    second._create_bucket(second._client)  # as if both had seen it missing: BucketAlreadyOwnedByYou
    second.put_bytes("y.json", b"2")
    assert sorted(first.list("")) == ["x.json", "y.json"]


def test_presigned_urls_use_the_public_endpoint_where_one_is_set(monkeypatch):
    """Compose: the services reach MinIO as http://minio:9000, clients as http://localhost:9000."""
    from shared.storage.s3 import S3Storage

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    inside = S3Storage("b", endpoint_url="http://minio:9000", public_endpoint_url="http://localhost:9000")
    url = inside.presign_get("renders/r1/video.mp4", 60).url
    assert url.startswith("http://localhost:9000/b/renders/r1/video.mp4?")
    same = S3Storage("b", endpoint_url="http://minio:9000")
    assert same.presign_get("k", 60).url.startswith("http://minio:9000/b/k?")
