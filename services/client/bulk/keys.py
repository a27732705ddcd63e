"""Deterministic identities: a file's content hash, and Idempotency-Keys derived from what is sent, so a
rerun after a crash repeats exactly the request it may already have made (the API answers the original)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _key(kind: str, *parts: str) -> str:
    h = hashlib.sha256(kind.encode())
    for p in parts:
        h.update(b"\0" + p.encode())
    return f"stdub-{kind}-{h.hexdigest()[:40]}"


def upload_key(content_hash: str, size: int, content_type: str, filename: str, generation: int = 0) -> str:
    """One upload per distinct file (``generation`` moves on when an upload expired and is made again)."""
    return _key("upload", content_hash, str(size), content_type, filename, str(generation))


def uploads_key(file_keys: Iterable[str]) -> str:
    """Many uploads made in one call, from their files' own keys (``upload_key``) in order."""
    return _key("uploads", *file_keys)


def files_key(file_keys: Iterable[str]) -> str:
    """Many small files sent in one call (``POST /v1/uploads/files``), from their own keys in order."""
    return _key("files", *file_keys)


def batch_key(subject_id: str, items: Iterable[tuple[str, str, str, str, int]]) -> str:
    """A batch from its subject and its items' (ref, content hash, upload id, mode, attempt) in order:
    ``attempt`` moves on when a failed item is retried, so the retry is a new request."""
    parts = [subject_id]
    for ref, content_hash, upload_id, mode, attempt in items:
        parts += [ref, content_hash, upload_id, mode, str(attempt)]
    return _key("batch", *parts)
