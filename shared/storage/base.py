"""The storage interface every service and worker uses: keys, typed errors, and the shared folder logic.

Stages read their inputs from and write their outputs to storage by *key* (a relative posix path such
as ``tenants/t1/subjects/s1/source.mp4``); a worker's local disk is only a cache. Two backends implement
:class:`Storage`: a local folder (the embedded default) and S3 (any S3-compatible endpoint). The
contract both keep, and the tests check on both:

- every write is atomic: the final key appears only once its content is complete;
- reads and writes stream (no whole video in memory);
- every method checks its keys with :func:`check_key` before touching anything.
"""

from __future__ import annotations

import io
import json
import re
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

from shared.errors import SyncTalkError
from shared.telemetry.storage import trace_operations

MAX_KEY_LENGTH = 512
# One path component on disk may be at most 255 bytes (NAME_MAX); temporary names add ~41 characters.
MAX_SEGMENT_LENGTH = 200
COMPLETE_MARKER = ".complete"
CHUNK = 1 << 20  # bytes per read/write when streaming

_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")
# Temporary names (``<name>.partial-<32 hex>``) are the backends' own: no caller key may look like one,
# and listings never show them, so a reader never sees a half-written object.
_TEMP = re.compile(r"\.partial-[0-9a-f]{32}$")


class StorageError(SyncTalkError):
    """Storage could not do what was asked. Messages never carry credentials or object keys.

    ``transient``: the same request may well succeed later (storage unreachable, timed out, a 5xx or
    throttling answer): workers retry those with backoff (``RetryingStorage``) instead of failing the job.
    Everything else (a missing object, a refused credential, a bad key) is permanent."""

    code = "storage_error"

    def __init__(self, message: str, *, key: str | None = None, transient: bool = False) -> None:
        super().__init__(message)
        self.key = key  # for logs; deliberately not in the message a user may see
        self.transient = transient


class StorageKeyError(StorageError):
    """A malformed key (or one that would resolve outside the storage root)."""

    code = "storage_key"


class NotFoundError(StorageError):
    """No object at that key (or no complete folder at that prefix)."""

    code = "storage_not_found"


class SignatureError(StorageError):
    """A signed storage URL whose signature is missing, malformed or does not match."""

    code = "storage_signature"


class SignatureExpiredError(SignatureError):
    """A signed storage URL used after its expiry time."""

    code = "storage_signature_expired"


class TooLargeError(StorageError):
    """An upload larger than the limit its URL was signed for; nothing was published."""

    code = "file_too_large"


def check_key(key: str) -> str:
    """``key`` when it is a valid key, else :class:`StorageKeyError`.

    Keys are relative posix paths: segments of ``[A-Za-z0-9._-]`` joined by ``/``; no ``.`` or ``..``
    segment, no leading or trailing ``/``, no empty segment, at most 512 characters (and 200 per segment,
    so that every key is also a valid file name on disk).
    """
    if not isinstance(key, str) or not key:
        raise StorageKeyError("A storage key must be a non-empty string.")
    if len(key) > MAX_KEY_LENGTH:
        raise StorageKeyError(f"A storage key must be at most {MAX_KEY_LENGTH} characters.")
    for segment in key.split("/"):
        if not segment:
            raise StorageKeyError("A storage key must be relative and have no empty segment ('//').")
        if segment in (".", ".."):
            raise StorageKeyError("A storage key must not contain '.' or '..' segments.")
        if len(segment) > MAX_SEGMENT_LENGTH:
            raise StorageKeyError(
                f"Each segment of a storage key must be at most {MAX_SEGMENT_LENGTH} characters."
            )
        if not _SEGMENT.fullmatch(segment):
            raise StorageKeyError("A storage key may only use letters, digits, '.', '_', '-' and '/'.")
        if _TEMP.search(segment):
            raise StorageKeyError("A storage key must not end like a temporary name ('.partial-<hex>').")
    return key


def check_prefix(prefix: str, *, allow_empty: bool = False) -> str:
    """A folder prefix: a key (a trailing ``/`` is tolerated), or ``""`` (everything) where allowed."""
    prefix = prefix.rstrip("/") if isinstance(prefix, str) else prefix
    if prefix == "" and allow_empty:
        return ""
    return check_key(prefix)


def join_key(prefix: str, name: str) -> str:
    return f"{prefix}/{name}" if prefix else name


def temp_name(name: str) -> str:
    """A unique temporary sibling of ``name``: writers publish by renaming/copying it to ``name``."""
    return f"{name}.partial-{uuid.uuid4().hex}"


def is_temp_name(name: str) -> bool:
    return bool(_TEMP.search(name))


@dataclass(frozen=True)
class SignedRequest:
    """What a client needs to fetch or upload one object without credentials of its own."""

    url: str
    method: str
    headers: dict[str, str]  # headers the client must send (a PUT: its Content-Type)
    expires_at: datetime  # UTC


@dataclass(frozen=True)
class TransferReport:
    """What :meth:`Storage.upload_dir` / :meth:`Storage.sync_dir` did."""

    transferred: int  # files copied
    skipped: int  # files already present with the same size (downloads only)
    bytes: int  # bytes copied


def check_range(start: int, length: int) -> None:
    if start < 0 or length <= 0:
        raise ValueError(f"a part is at least one byte from a start >= 0, not {length} from {start}")


def copy_exactly(src: BinaryIO, out, n: int, key: str) -> None:
    """``n`` bytes from ``src`` written to ``out`` (skipped when None); fewer there is an error."""
    while n > 0:
        chunk = src.read(min(n, CHUNK))
        if not chunk:
            raise StorageError("The stored file is shorter than the part asked for.", key=key)
        if out is not None:
            out.write(chunk)
        n -= len(chunk)


def check_expiry(expires_s: int) -> int:
    # SigV4 presigned URLs live at most 7 days; the same bound keeps local URLs honest.
    if not 1 <= int(expires_s) <= 7 * 24 * 3600:
        raise ValueError("expires_s must be between 1 second and 7 days")
    return int(expires_s)


class Storage(ABC):
    """One interface, two backends (:class:`~shared.storage.local.LocalStorage`,
    :class:`~shared.storage.s3.S3Storage`). See docs/STORAGE.md."""

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        # each operation a backend (or a wrapper) implements runs in a span while a request or a stage
        # is traced (shared/telemetry/storage.py); nothing is traced otherwise
        trace_operations(cls)

    # --- writes (all atomic: a temporary name first, then the final key) ---
    @abstractmethod
    def put_file(self, key: str, path: Path, *, content_type: str | None = None) -> None:
        """Upload a file from disk, streamed."""

    @abstractmethod
    def put_stream(self, key: str, stream: BinaryIO, *, content_type: str | None = None) -> int:
        """Upload everything ``stream.read()`` gives, streamed; returns the number of bytes."""

    def put_bytes(self, key: str, data: bytes, *, content_type: str | None = None) -> None:
        """Small things (JSON documents, markers)."""
        self.put_stream(key, io.BytesIO(data), content_type=content_type)

    # --- reads ---
    @abstractmethod
    def get_file(self, key: str, path: Path) -> Path:
        """Download to ``path`` (written to a temporary name beside it, then renamed); returns ``path``."""

    @abstractmethod
    def open_read(self, key: str) -> AbstractContextManager[BinaryIO]:
        """A streaming reader, e.g. for an HTTP response body. :class:`NotFoundError` when missing."""

    def read_bytes(self, key: str) -> bytes:
        with self.open_read(key) as fh:
            return fh.read()

    def get_range(self, key: str, start: int, length: int, path: Path) -> Path:
        """Download ``length`` bytes from ``start`` of ``key`` to ``path`` (written to a temporary name
        beside it, then renamed): a file stored as a part of a shared object. :class:`StorageError`
        when the object holds fewer bytes."""
        from shared.storage.local import AtomicWriter

        check_range(start, length)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with self.open_read(key) as src, AtomicWriter(path) as out:
            copy_exactly(src, None, start, key)  # to the part's start
            copy_exactly(src, out, length, key)
        return path

    def read_head(self, key: str, n: int) -> tuple[bytes, int]:
        """The first ``n`` bytes stored at ``key`` (fewer when it is shorter) and its whole size, in one
        request where the backend allows (checking an upload's header without fetching all of it).
        :class:`NotFoundError` when missing."""
        with self.open_read(key) as fh:
            head = fh.read(n)
        return head, self.size(key)

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def size(self, key: str) -> int:
        """Bytes stored at ``key``; :class:`NotFoundError` when missing."""

    # --- deletes and listings ---
    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove one object; a missing one is fine."""

    @abstractmethod
    def delete_prefix(self, prefix: str) -> int:
        """Remove everything under ``prefix/``; returns how many objects were removed."""

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[str]:
        """Keys under ``prefix/`` (``""``: every key). Temporary objects are never listed."""

    # --- signed URLs: a client uploads or downloads without credentials ---
    @abstractmethod
    def presign_get(self, key: str, expires_s: int = 900, *, filename: str | None = None) -> SignedRequest:
        """A short-lived GET URL; ``filename`` makes the response an attachment with that name."""

    @abstractmethod
    def presign_put(
        self, key: str, content_type: str, expires_s: int = 900, *, max_bytes: int | None = None
    ) -> SignedRequest:
        """A short-lived PUT URL; the client must send the returned headers (its Content-Type, and on S3
        its Content-Length). ``max_bytes``: the file's announced size; the local route refuses a longer
        body, S3 signs it as the exact Content-Length (a presigned PUT signs one length, not a range)."""

    @abstractmethod
    def check(self) -> None:
        """Raise :class:`StorageError` when storage is not usable (for ``/readyz``)."""

    # --- folders (a dataset, a model): file by file, streamed ---
    def upload_dir(self, folder: Path, prefix: str) -> TransferReport:
        """Upload every file under ``folder`` to ``prefix/``, then write ``prefix/.complete`` last.

        The marker is a JSON manifest (relative name -> size): readers that find it know the folder is
        whole, and :meth:`sync_dir` downloads exactly what it names. An older marker is removed first,
        so a folder being replaced never looks complete halfway through.
        """
        prefix = check_prefix(prefix)
        folder = Path(folder)
        if not folder.is_dir():
            raise StorageError(f"Cannot upload {folder}: not a folder.")
        files = _local_files(folder)
        self.delete(join_key(prefix, COMPLETE_MARKER))
        total = 0
        for rel, path in files.items():
            self.put_file(join_key(prefix, rel), path)
            total += path.stat().st_size
        manifest = {"files": {rel: path.stat().st_size for rel, path in files.items()}}
        self.put_bytes(join_key(prefix, COMPLETE_MARKER), _dump(manifest), content_type="application/json")
        return TransferReport(transferred=len(files), skipped=0, bytes=total)

    def sync_dir(self, prefix: str, folder: Path) -> TransferReport:
        """Download the complete folder at ``prefix/`` into ``folder`` (the worker's local cache).

        Files already present with the manifest's size are skipped; each download is atomic, and the
        marker is written locally last, so a local folder with ``.complete`` is whole too.
        :class:`NotFoundError` when ``prefix`` holds no complete folder.
        """
        prefix = check_prefix(prefix)
        folder = Path(folder)
        marker = join_key(prefix, COMPLETE_MARKER)
        try:
            raw = self.read_bytes(marker)
        except NotFoundError:
            raise NotFoundError(
                "No complete folder is stored there (its upload has not finished).", key=prefix
            ) from None
        sizes: dict[str, int] = json.loads(raw)["files"]
        local_marker = folder / COMPLETE_MARKER
        if local_marker.is_file() and local_marker.read_bytes() != raw:
            local_marker.unlink()  # the cached copy is of another version: not whole until this sync ends
        transferred = skipped = total = 0
        for rel, expected in sizes.items():
            check_key(rel)  # the manifest names keys; never let it write outside ``folder``
            target = folder / rel
            if target.is_file() and target.stat().st_size == expected:
                skipped += 1
                continue
            self.get_file(join_key(prefix, rel), target)
            if target.stat().st_size != expected:
                raise StorageError("A stored file's size differs from its folder's manifest.", key=rel)
            transferred += 1
            total += expected
        folder.mkdir(parents=True, exist_ok=True)
        _write_local_marker(local_marker, raw)
        return TransferReport(transferred=transferred, skipped=skipped, bytes=total)


trace_operations(Storage)  # the operations written here once for every backend (folders, put_bytes, ...)


def _local_files(folder: Path) -> dict[str, Path]:
    """Relative key -> path of every file to upload (not the marker, not leftover temporary files)."""
    files: dict[str, Path] = {}
    for path in sorted(folder.rglob("*")):
        if not path.is_file():
            continue
        rel = path.relative_to(folder).as_posix()
        if rel == COMPLETE_MARKER or is_temp_name(path.name):
            continue
        files[check_key(rel)] = path
    return files


def _dump(obj: object) -> bytes:
    return json.dumps(obj, indent=1, sort_keys=True).encode()


def _write_local_marker(path: Path, data: bytes) -> None:
    tmp = path.with_name(temp_name(path.name))
    tmp.write_bytes(data)
    tmp.replace(path)
