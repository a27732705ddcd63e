"""Helpers of the storage tests: ports, test data, and what a backend really holds underneath."""

from __future__ import annotations

import hashlib
import os
import socket
import uuid
from pathlib import Path

from shared.storage import LocalStorage, Storage

AWS_TEST_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing-secret"}
MiB = 1 << 20
SECRET = "storage-test-secret"
PUBLIC_URL = "http://api.test:8000"


def new_bucket() -> str:
    """A bucket name nobody has used yet: each test starts from a bucket the backend must create."""
    return f"synctalk-test-{uuid.uuid4().hex[:16]}"


def free_port() -> int:
    """A loopback port nothing listens on (once this returns, until someone binds it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_random_file(path: Path, mib: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as fh:
        for _ in range(mib):
            fh.write(os.urandom(MiB))
    return path


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(MiB):
            digest.update(chunk)
    return digest.hexdigest()


def raw_objects(storage: Storage) -> list[str]:
    """Everything the backend holds, temporary objects and unfinished multipart uploads included."""
    if isinstance(storage, LocalStorage):
        if not storage.root.exists():
            return []
        return sorted(
            p.relative_to(storage.root).as_posix() for p in storage.root.rglob("*") if not p.is_dir()
        )
    client = storage._client
    names = [o["Key"] for o in client.list_objects_v2(Bucket=storage.bucket).get("Contents", [])]
    uploads = client.list_multipart_uploads(Bucket=storage.bucket).get("Uploads", [])
    return sorted(names + [f"(multipart) {u['Key']}" for u in uploads])


class FailingStream:
    """A source stream that gives ``fail_after`` bytes, then raises as a broken upload would."""

    def __init__(self, fail_after: int) -> None:
        self.left = fail_after

    def read(self, n: int = -1) -> bytes:
        if self.left <= 0:
            raise ConnectionResetError("client went away")
        n = self.left if n is None or n < 0 else min(n, self.left)
        self.left -= n
        return b"x" * n


class ChunkStream:
    """A non-seekable stream of ``total`` bytes made on the fly (nothing held in memory)."""

    def __init__(self, total: int) -> None:
        self.left = total

    def read(self, n: int = -1) -> bytes:
        n = self.left if n is None or n < 0 else min(n, self.left)
        self.left -= n
        return b"\x5a" * n
