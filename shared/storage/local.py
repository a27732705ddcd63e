"""Storage in a local folder: the embedded default (one machine, nothing installed).

Objects are files under ``root``; a key is the file's path relative to it. Writes go to a temporary file
beside the target, are fsynced, then renamed over it (``os.replace`` is atomic on one filesystem), so a
reader sees either the old object or the whole new one. Keys never escape ``root``: :func:`check_key`
refuses ``..`` and absolute paths, and every path is resolved and checked to be inside ``root`` again,
so a symlink inside ``root`` that points elsewhere is not followed.

Signed URLs point at the API (``{public_url}/storage/{key}?...``); the route there calls
:meth:`LocalStorage.verify_signed`, then :meth:`LocalStorage.open_read` (GET) or
:meth:`LocalStorage.receive` / :meth:`LocalStorage.writer` (PUT).
"""

from __future__ import annotations

import mimetypes
import os
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from shared.storage import signing
from shared.storage.base import (
    CHUNK,
    NotFoundError,
    SignedRequest,
    Storage,
    StorageError,
    StorageKeyError,
    TooLargeError,
    check_expiry,
    check_key,
    check_prefix,
    is_temp_name,
    temp_name,
)
from shared.storage.signing import SignedParams


class AtomicWriter:
    """A file being written under a temporary name; :meth:`commit` publishes it, :meth:`abort` drops it.

    Used as a context manager it commits on a clean exit and aborts on an exception. It refuses to grow
    past ``max_bytes`` (:class:`TooLargeError`), so an upload's limit holds whatever the client claims.
    """

    def __init__(self, target: Path, max_bytes: int | None = None) -> None:
        self.target = target
        self.max_bytes = max_bytes
        self.written = 0
        self._tmp = target.with_name(temp_name(target.name))
        self._fh = _create(self._tmp)

    def write(self, chunk: bytes) -> None:
        self.written += len(chunk)
        if self.max_bytes is not None and self.written > self.max_bytes:
            raise TooLargeError(f"The upload is larger than the {self.max_bytes} bytes it was allowed.")
        try:
            self._fh.write(chunk)
        except OSError as exc:  # e.g. a full disk
            raise StorageError(f"Could not write a stored file ({exc.strerror}).") from None

    def commit(self) -> int:
        try:
            self._fh.flush()
            os.fsync(self._fh.fileno())  # the data is on disk before the name points at it
            self._fh.close()
            os.replace(self._tmp, self.target)
        except OSError as exc:
            self.abort()
            raise StorageError(f"Could not publish a stored file ({exc.strerror}).") from None
        _fsync_dir(self.target.parent)
        return self.written

    def abort(self) -> None:
        self._fh.close()
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> AtomicWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


class LocalStorage(Storage):
    def __init__(self, root: Path, secret_key: str, public_url: str) -> None:
        self.root = Path(root).expanduser().absolute()
        self._secret = secret_key
        self.public_url = public_url.rstrip("/")

    def __repr__(self) -> str:
        return f"LocalStorage({str(self.root)!r})"

    # --- paths ---
    def _path(self, key: str) -> Path:
        """The file for ``key``, refused when it (through any symlink) resolves outside ``root``."""
        path = self.root / check_key(key)
        if not path.resolve().is_relative_to(self.root.resolve()):
            raise StorageKeyError("That storage key resolves outside the storage folder.", key=key)
        return path

    # --- writes ---
    def writer(self, key: str, max_bytes: int | None = None) -> AtomicWriter:
        """An :class:`AtomicWriter` for ``key``, e.g. for an async route that writes chunk by chunk."""
        return AtomicWriter(self._path(key), max_bytes)

    def put_stream(self, key: str, stream: BinaryIO, *, content_type: str | None = None) -> int:
        # The local backend keeps no content type: it is guessed from the key's extension when served.
        with self.writer(key) as w:
            while chunk := stream.read(CHUNK):
                w.write(chunk)
        return w.written

    def put_file(self, key: str, path: Path, *, content_type: str | None = None) -> None:
        with _open_source(path) as fh:
            self.put_stream(key, fh, content_type=content_type)

    def receive(
        self,
        key: str,
        stream: BinaryIO | Iterable[bytes],
        content_type: str | None = None,
        max_bytes: int | None = None,
    ) -> int:
        """The body of a signed PUT, streamed to ``key``; more than ``max_bytes`` raises
        :class:`TooLargeError` and publishes nothing. ``stream`` is a file object or an iterable of
        chunks. Returns the bytes stored."""
        chunks = _chunks(stream) if hasattr(stream, "read") else stream
        with self.writer(key, max_bytes) as w:
            for chunk in chunks:
                w.write(chunk)
        return w.written

    # --- reads ---
    def get_file(self, key: str, path: Path) -> Path:
        path = Path(path)
        with self.open_read(key) as src:
            path.parent.mkdir(parents=True, exist_ok=True)
            with AtomicWriter(path) as w:
                while chunk := src.read(CHUNK):
                    w.write(chunk)
        return path

    @contextmanager
    def _open(self, key: str) -> Iterator[BinaryIO]:
        path = self._path(key)
        try:
            fh = path.open("rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise NotFoundError("The stored file was not found.", key=key) from None
        with fh:
            yield fh

    def open_read(self, key: str) -> AbstractContextManager[BinaryIO]:
        return self._open(key)

    def read_head(self, key: str, n: int) -> tuple[bytes, int]:
        with self._open(key) as fh:
            return fh.read(max(n, 0)), os.fstat(fh.fileno()).st_size

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def size(self, key: str) -> int:
        path = self._path(key)
        if not path.is_file():
            raise NotFoundError("The stored file was not found.", key=key)
        return path.stat().st_size

    # --- deletes and listings ---
    def delete(self, key: str) -> None:
        path = self._path(key)
        if path.is_dir():
            return  # a prefix, not an object
        path.unlink(missing_ok=True)
        self._prune(path.parent)

    def delete_prefix(self, prefix: str) -> int:
        folder = self._path(check_prefix(prefix))
        if not folder.is_dir():
            return 0
        removed = 0
        for dirpath, dirnames, filenames in os.walk(folder, topdown=False):
            for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
                # Links are removed, never followed: deleting a tenant cannot reach outside root.
                os.unlink(os.path.join(dirpath, name))
                removed += not is_temp_name(name)
            _rmdir_quietly(Path(dirpath))
        self._prune(folder.parent)
        return removed

    def list(self, prefix: str = "") -> Iterator[str]:
        prefix = check_prefix(prefix, allow_empty=True)
        folder = self._path(prefix) if prefix else self.root
        root = self.root.resolve()
        keys: list[str] = []
        for dirpath, _dirnames, filenames in os.walk(folder):  # never descends into symlinked folders
            for name in filenames:
                path = Path(dirpath, name)
                if is_temp_name(name) or not path.resolve().is_relative_to(root) or not path.is_file():
                    continue
                keys.append(path.relative_to(self.root).as_posix())
        yield from sorted(keys)

    def _prune(self, folder: Path) -> None:
        """Remove empty folders left above a deleted object, up to (not including) root."""
        root = self.root
        while folder != root and folder.is_relative_to(root) and _rmdir_quietly(folder):
            folder = folder.parent

    # --- signed URLs (served by the API's /storage/{key} route) ---
    def presign_get(self, key: str, expires_s: int = 900, *, filename: str | None = None) -> SignedRequest:
        check_key(key)
        expires = int(time.time()) + check_expiry(expires_s)
        url = signing.signed_url(self.public_url, self._secret, "GET", key, expires, filename=filename)
        return SignedRequest(url, "GET", {}, datetime.fromtimestamp(expires, UTC))

    def presign_put(
        self, key: str, content_type: str, expires_s: int = 900, *, max_bytes: int | None = None
    ) -> SignedRequest:
        check_key(key)
        content_type = content_type.strip()
        expires = int(time.time()) + check_expiry(expires_s)
        url = signing.signed_url(
            self.public_url, self._secret, "PUT", key, expires, content_type=content_type, max_bytes=max_bytes
        )
        return SignedRequest(url, "PUT", {"Content-Type": content_type}, datetime.fromtimestamp(expires, UTC))

    def verify_signed(
        self, method: str, key: str, query_params: Mapping[str, str], *, content_type: str | None = None
    ) -> SignedParams:
        """Check a request to ``/storage/{key}``: ``method`` is the HTTP method, ``query_params`` the
        URL's query, ``content_type`` the request's Content-Type header (a PUT signs it).
        Raises :class:`SignatureError` / :class:`SignatureExpiredError` (answer 403)."""
        return signing.parse_and_verify(self._secret, method, key, query_params, content_type=content_type)

    def response_headers(self, key: str, params: SignedParams) -> dict[str, str]:
        """Headers for a GET answer: Content-Type (from the key's extension), Content-Length, and
        Content-Disposition when the URL was signed with a filename."""
        headers = {
            "Content-Type": mimetypes.guess_type(key)[0] or "application/octet-stream",
            "Content-Length": str(self.size(key)),
        }
        if params.filename:
            headers["Content-Disposition"] = signing.content_disposition(params.filename)
        return headers

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(
                f"The storage folder {self.root} cannot be created ({exc.strerror})."
            ) from None
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise StorageError(f"The storage folder {self.root} is not writable.")


def _create(tmp: Path) -> BinaryIO:
    # Exclusive create of a fresh name; a concurrent delete may prune the empty parent between mkdir and
    # open, so try again a few times.
    for attempt in range(3):
        try:
            tmp.parent.mkdir(parents=True, exist_ok=True)
            return tmp.open("xb")
        except FileNotFoundError:
            if attempt < 2:
                continue
            raise StorageError("Could not create a stored file (its folder keeps disappearing).") from None
        except OSError as exc:
            raise StorageError(f"Could not write a stored file ({exc.strerror}).") from None
    raise AssertionError("unreachable")


def _open_source(path: Path) -> BinaryIO:
    try:
        return Path(path).open("rb")
    except OSError as exc:
        raise StorageError(f"Cannot read {path} to store it ({exc.strerror}).") from None


def _chunks(stream: BinaryIO) -> Iterator[bytes]:
    while chunk := stream.read(CHUNK):
        yield chunk


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _rmdir_quietly(folder: Path) -> bool:
    try:
        folder.rmdir()
        return True
    except OSError:
        return False
