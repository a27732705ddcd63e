"""Storage in an S3 bucket (AWS or any S3-compatible endpoint: MinIO, moto's server in tests).

Atomic publish: an upload goes to ``<key>.partial-<uuid>`` (multipart and streamed by s3transfer), is
then copied server-side to ``<key>`` (``CopyObject``; the managed multipart copy above 5 GB) and the
temporary object deleted, so ``<key>`` appears only complete. The bucket is created on first use when
missing. Credentials come from boto3's usual chain (``AWS_*`` variables, profile, instance role); error
messages name neither credentials nor object keys.
"""

from __future__ import annotations

import io
import mimetypes
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlsplit

import boto3
from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore import exceptions as bx
from botocore.config import Config

from shared.storage.base import (
    CHUNK,
    NotFoundError,
    SignedRequest,
    Storage,
    StorageError,
    check_expiry,
    check_key,
    check_prefix,
    check_range,
    copy_exactly,
    is_temp_name,
    join_key,
    temp_name,
)
from shared.storage.local import AtomicWriter
from shared.storage.signing import content_disposition

MiB = 1 << 20
SMALL_PUT = 16 * MiB  # bytes stored with one PutObject (S3 takes up to 5 GB in one; this keeps memory small)
_NOT_FOUND = {"404", "NoSuchKey", "NoSuchBucket", "NotFound"}
_DENIED = {"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken"}
# answers that say "not now" rather than "no": the same request may succeed later
_TRANSIENT = {
    "500", "502", "503", "504", "InternalError", "ServiceUnavailable", "SlowDown", "Throttling",
    "ThrottlingException", "RequestTimeout", "RequestTimeTooSkewed", "OperationAborted",
    "RequestLimitExceeded", "BadGateway", "GatewayTimeout",
}  # fmt: skip


def _transfer(chunk_mib: int, threads: int, in_memory: int | None = None) -> TransferConfig:
    config = TransferConfig(
        multipart_threshold=chunk_mib * MiB,
        multipart_chunksize=chunk_mib * MiB,
        max_concurrency=threads,
        preferred_transfer_client="classic",
    )
    if in_memory is not None:
        # A stream cannot be re-read, so each part is held in memory until sent: bound how many.
        config.max_in_memory_upload_chunks = in_memory
    return config


_FILE_UPLOAD = _transfer(16, 4)  # parts are read lazily from disk: memory stays small
_STREAM_UPLOAD = _transfer(5, 2, in_memory=2)  # at most ~2 parts (16 MiB) of a stream in memory
_BIG_COPY = _transfer(256, 4)


class S3Storage(Storage):
    copy_threshold = 5 * 1024**3  # CopyObject's limit; above it the managed multipart copy
    page_size = 1000  # keys per listing page and per DeleteObjects call (S3's maximum for both)

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        client: object | None = None,
        *,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        max_attempts: int = 5,
        public_endpoint_url: str | None = None,
    ) -> None:
        if not bucket or "/" in bucket:
            raise StorageError("An S3 bucket name is required (s3://BUCKET[/PREFIX]).")
        self.bucket = bucket
        self.prefix = check_prefix(prefix, allow_empty=True)
        self.endpoint_url = endpoint_url
        self.region = region
        parts = urlsplit(endpoint_url or "")  # named in messages: never with any userinfo it carries
        self._where = (
            f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}" if endpoint_url else f"AWS S3 ({region})"
        )
        self._client = client or _client(endpoint_url, region, connect_timeout, read_timeout, max_attempts)
        self._given_client = client is not None
        # Presigned URLs go to clients, who may reach the endpoint by another address than the workers
        # (compose: http://minio:9000 inside, http://localhost:9000 outside). Signing is local: this
        # client never connects to anything.
        self._signer = (
            _client(public_endpoint_url, region, connect_timeout, read_timeout, 1)
            if public_endpoint_url and public_endpoint_url != endpoint_url
            else self._client
        )
        self._probe: object | None = None
        self._bucket_ready = False
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"S3Storage(bucket={self.bucket!r}, prefix={self.prefix!r}, endpoint={self._where})"

    def _full(self, key: str) -> str:
        return join_key(self.prefix, check_key(key))

    # --- errors: one place maps botocore's to ours ---
    @contextmanager
    def _mapped(self, key: str | None = None) -> Iterator[None]:
        try:
            yield
        except S3UploadFailedError as exc:
            cause = exc.__cause__ or exc.__context__
            if isinstance(cause, bx.ClientError | bx.BotoCoreError):
                with self._mapped(key):
                    raise cause from None
            raise StorageError("The upload to S3 failed.", key=key) from exc
        except bx.ClientError as exc:
            err = exc.response.get("Error", {})
            code = str(err.get("Code") or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode"))
            if code in _NOT_FOUND:
                what = "bucket" if code == "NoSuchBucket" else "file"
                raise NotFoundError(f"The stored {what} was not found.", key=key) from exc
            if code in _DENIED:
                raise StorageError(
                    f"S3 at {self._where} refused the request ({code}): check the storage credentials "
                    "and the bucket's permissions.",
                    key=key,
                ) from exc
            raise StorageError(
                f"An S3 request to {self._where} failed ({code}).", key=key, transient=code in _TRANSIENT
            ) from exc
        except (bx.NoCredentialsError, bx.PartialCredentialsError) as exc:
            raise StorageError(
                "No S3 credentials were found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                "(or an AWS profile or role)."
            ) from exc
        except (bx.ConnectionError, bx.HTTPClientError) as exc:
            raise StorageError(
                f"S3 storage is unreachable at {self._where} ({type(exc).__name__}).", key=key, transient=True
            ) from exc
        except bx.BotoCoreError as exc:
            # a body cut short, a checksum or a stream error mid-transfer: the request may be retried
            transient = isinstance(exc, bx.IncompleteReadError | bx.ResponseStreamingError | bx.ChecksumError)
            raise StorageError(
                f"An S3 request to {self._where} failed ({type(exc).__name__}).", key=key, transient=transient
            ) from exc

    def _ensure_bucket(self, *, probe: bool = False) -> None:
        """Create the bucket when missing (once per process; tolerant of a concurrent creator)."""
        if self._bucket_ready and not probe:
            return
        if probe and self._probe is None:  # /readyz must answer fast: its probe neither retries nor waits
            self._probe = (
                self._client if self._given_client else _client(self.endpoint_url, self.region, 2.0, 5.0, 1)
            )
        client = self._probe if probe else self._client
        with self._lock, self._mapped():
            try:
                client.head_bucket(Bucket=self.bucket)
            except bx.ClientError as exc:
                if str(exc.response.get("Error", {}).get("Code")) not in _NOT_FOUND:
                    raise
                self._create_bucket(client)
            self._bucket_ready = True

    def _create_bucket(self, client: object) -> None:
        kwargs: dict[str, object] = {"Bucket": self.bucket}
        if self.region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        try:
            client.create_bucket(**kwargs)
        except bx.ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if code == "BucketAlreadyExists":
                raise StorageError("The S3 bucket name is taken by another account.") from exc
            if code not in ("BucketAlreadyOwnedByYou", "OperationAborted"):  # a racing creator won
                raise

    # --- writes: temporary key, then a server-side copy ---
    def _publish(
        self, key: str, upload: Callable[[str], None], size: Callable[[], int], content_type: str
    ) -> None:
        full, tmp = self._full(key), temp_name(self._full(key))
        self._ensure_bucket()
        try:
            with self._mapped(key):
                upload(tmp)
                source = {"Bucket": self.bucket, "Key": tmp}
                if size() < self.copy_threshold:
                    self._client.copy_object(Bucket=self.bucket, Key=full, CopySource=source)
                else:
                    self._client.copy(
                        source, self.bucket, full, ExtraArgs={"ContentType": content_type}, Config=_BIG_COPY
                    )
        finally:
            # A leftover temporary object is never listed, and a lifecycle rule reaps it.
            with suppress(bx.ClientError, bx.BotoCoreError):
                self._client.delete_object(Bucket=self.bucket, Key=tmp)

    def put_file(self, key: str, path: Path, *, content_type: str | None = None) -> None:
        path = Path(path)
        if not path.is_file():
            raise StorageError(f"Cannot read {path} to store it: not a file.")
        ctype = _content_type(key, content_type)
        self._publish(
            key,
            lambda tmp: self._client.upload_file(
                str(path), self.bucket, tmp, ExtraArgs={"ContentType": ctype}, Config=_FILE_UPLOAD
            ),
            lambda: path.stat().st_size,
            ctype,
        )

    def put_stream(self, key: str, stream: BinaryIO, *, content_type: str | None = None) -> int:
        ctype = _content_type(key, content_type)
        counted = _Counting(stream)  # has no seek(): s3transfer reads it part by part
        self._publish(
            key,
            lambda tmp: self._client.upload_fileobj(
                counted, self.bucket, tmp, ExtraArgs={"ContentType": ctype}, Config=_STREAM_UPLOAD
            ),
            lambda: counted.count,
            ctype,
        )
        return counted.count

    def put_bytes(self, key: str, data: bytes, *, content_type: str | None = None) -> None:
        # One PutObject is atomic already (the object appears whole or not at all, and a failed one
        # leaves the previous object): no temporary key and copy for what fits in one request.
        if len(data) > SMALL_PUT:
            super().put_bytes(key, data, content_type=content_type)
            return
        full = self._full(key)
        self._ensure_bucket()
        with self._mapped(key):
            self._client.put_object(
                Bucket=self.bucket, Key=full, Body=data, ContentType=_content_type(key, content_type)
            )

    # --- reads ---
    def get_file(self, key: str, path: Path) -> Path:
        path = Path(path)
        with self.open_read(key) as src, AtomicWriter(path) as out:
            while chunk := src.read(CHUNK):
                out.write(chunk)
        return path

    @contextmanager
    def _open(self, key: str) -> Iterator[BinaryIO]:
        full = self._full(key)
        self._ensure_bucket()
        with self._mapped(key):
            body = self._client.get_object(Bucket=self.bucket, Key=full)["Body"]
        try:
            yield io.BufferedReader(_Body(body, self, key), CHUNK)
        finally:
            body.close()

    def open_read(self, key: str) -> AbstractContextManager[BinaryIO]:
        return self._open(key)

    def get_range(self, key: str, start: int, length: int, path: Path) -> Path:
        # one ranged GET for the part, not the whole shared object
        check_range(start, length)
        path = Path(path)
        full = self._full(key)
        self._ensure_bucket()
        with self._mapped(key):
            body = self._client.get_object(
                Bucket=self.bucket, Key=full, Range=f"bytes={start}-{start + length - 1}"
            )["Body"]
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with AtomicWriter(path) as out:
                copy_exactly(io.BufferedReader(_Body(body, self, key), CHUNK), out, length, key)
        finally:
            body.close()
        return path

    def read_head(self, key: str, n: int) -> tuple[bytes, int]:
        # one ranged GET: the bytes, and the size from Content-Range ("bytes 0-99/1234")
        if n <= 0:
            return b"", self.size(key)
        full = self._full(key)
        self._ensure_bucket()
        with self._mapped(key):
            try:
                got = self._client.get_object(Bucket=self.bucket, Key=full, Range=f"bytes=0-{n - 1}")
            except bx.ClientError as exc:
                if exc.response.get("Error", {}).get("Code") != "InvalidRange":
                    raise
                return b"", self.size(key)  # an empty object: no byte satisfies the range
            body = got["Body"]
            try:
                head = body.read()
            finally:
                body.close()
        total = str(got.get("ContentRange") or "").rpartition("/")[2]
        return head, int(total) if total.isdigit() else int(got["ContentLength"])

    def _head(self, key: str) -> dict:
        full = self._full(key)
        self._ensure_bucket()
        with self._mapped(key):
            return self._client.head_object(Bucket=self.bucket, Key=full)

    def exists(self, key: str) -> bool:
        try:
            self._head(key)
        except NotFoundError:
            return False
        return True

    def size(self, key: str) -> int:
        return int(self._head(key)["ContentLength"])

    # --- deletes and listings ---
    def delete(self, key: str) -> None:
        full = self._full(key)
        self._ensure_bucket()
        with self._mapped(key):
            self._client.delete_object(Bucket=self.bucket, Key=full)

    def _objects(self, prefix: str) -> Iterator[str]:
        """Full object names under ``prefix/`` (temporary ones included), page by page."""
        self._ensure_bucket()
        full = "/".join(p for p in (self.prefix, prefix) if p)
        paginator = self._client.get_paginator("list_objects_v2")
        with self._mapped():
            pages = paginator.paginate(
                Bucket=self.bucket,
                Prefix=f"{full}/" if full else "",
                PaginationConfig={"PageSize": self.page_size},
            )
            for page in pages:
                for obj in page.get("Contents", []):
                    yield obj["Key"]

    def delete_prefix(self, prefix: str) -> int:
        prefix = check_prefix(prefix)
        removed = 0
        batch: list[str] = []
        for name in self._objects(prefix):  # stale temporary objects go too
            batch.append(name)
            removed += not is_temp_name(name)
            if len(batch) >= self.page_size:
                self._delete_batch(batch)
                batch = []
        if batch:
            self._delete_batch(batch)
        return removed

    def _delete_batch(self, names: list[str]) -> None:
        with self._mapped():
            answer = self._client.delete_objects(
                Bucket=self.bucket, Delete={"Objects": [{"Key": n} for n in names], "Quiet": True}
            )
        if answer.get("Errors"):
            raise StorageError(f"S3 refused to delete {len(answer['Errors'])} object(s).")

    def list(self, prefix: str = "") -> Iterator[str]:
        prefix = check_prefix(prefix, allow_empty=True)
        strip = len(self.prefix) + 1 if self.prefix else 0
        for name in self._objects(prefix):
            if not is_temp_name(name):
                yield name[strip:]

    # --- signed URLs ---
    def presign_get(self, key: str, expires_s: int = 900, *, filename: str | None = None) -> SignedRequest:
        params = {"Bucket": self.bucket, "Key": self._full(key)}
        if filename:
            params["ResponseContentDisposition"] = content_disposition(filename)
        return self._presign("get_object", "GET", params, expires_s, {})

    def presign_put(
        self, key: str, content_type: str, expires_s: int = 900, *, max_bytes: int | None = None
    ) -> SignedRequest:
        # A presigned PUT cannot sign a range of sizes (only POST policies can), but it can sign one
        # Content-Length: S3 then refuses a body of any other length (SignatureDoesNotMatch), so a file
        # announced small cannot be sent large. ``max_bytes`` is therefore the exact size here (uploads
        # announce theirs), and the client must send it as Content-Length (HTTP clients set it from
        # the body anyway). The API still compares the stored size with the announced one, for
        # S3-compatible servers that do not check signed headers (moto's, for one).
        content_type = content_type.strip()
        self._ensure_bucket()
        params = {"Bucket": self.bucket, "Key": self._full(key), "ContentType": content_type}
        headers = {"Content-Type": content_type}
        if max_bytes is not None:
            params["ContentLength"] = max_bytes
            headers["Content-Length"] = str(max_bytes)
        return self._presign("put_object", "PUT", params, expires_s, headers)

    def _presign(self, op: str, method: str, params: dict, expires_s: int, headers: dict) -> SignedRequest:
        expires_s = check_expiry(expires_s)
        with self._mapped(params["Key"]):
            url = self._signer.generate_presigned_url(op, Params=params, ExpiresIn=expires_s)
        expires_at = datetime.now(UTC) + timedelta(seconds=expires_s)
        return SignedRequest(url, method, headers, expires_at)

    def check(self) -> None:
        self._ensure_bucket(probe=True)


class _Counting:
    """A read-only view of a stream that counts what passed through (and hides any seek())."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self.count = 0

    def read(self, n: int = -1) -> bytes:
        data = self._stream.read(n)
        self.count += len(data)
        return data


class _Body(io.RawIOBase):
    """botocore's StreamingBody as a real binary file object, with its network errors mapped."""

    def __init__(self, body: object, storage: S3Storage, key: str) -> None:
        self._body, self._storage, self._key = body, storage, key

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:
        with self._storage._mapped(self._key):
            data = self._body.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def _content_type(key: str, given: str | None) -> str:
    # A real type always (S3-compatible servers mishandle a form-encoded default), guessed from the name.
    return given or mimetypes.guess_type(key)[0] or "application/octet-stream"


def _client(endpoint_url: str | None, region: str, connect: float, read: float, attempts: int) -> object:
    config = Config(
        region_name=region,
        signature_version="s3v4",
        connect_timeout=connect,
        read_timeout=read,
        retries={"mode": "standard", "max_attempts": attempts},
        # MinIO and other S3-compatible servers expect path-style addressing on a custom endpoint.
        s3={"addressing_style": "path"} if endpoint_url else {},
        # Checksums only where S3 requires them: older S3-compatible servers reject the new defaults,
        # and a presigned PUT must not demand a checksum header the client cannot know.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    # A session of our own: boto3's default session is not safe to share between threads.
    return boto3.session.Session().client("s3", endpoint_url=endpoint_url, config=config)
