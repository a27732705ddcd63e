"""Artifact storage: one interface (:class:`Storage`), a local-folder backend and an S3 backend.

``storage_from_settings(settings)`` picks the backend from ``SYNCTALK_STORAGE_URL``; see docs/STORAGE.md.
boto3 is imported only when S3 is used, so the embedded default does not pay for it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from shared.storage.base import (
    COMPLETE_MARKER,
    NotFoundError,
    SignatureError,
    SignatureExpiredError,
    SignedRequest,
    Storage,
    StorageError,
    StorageKeyError,
    TooLargeError,
    TransferReport,
    check_key,
)
from shared.storage.local import AtomicWriter, LocalStorage
from shared.storage.signing import SignedParams

if TYPE_CHECKING:
    from shared.settings import Settings
    from shared.storage.s3 import S3Storage

__all__ = [
    "COMPLETE_MARKER",
    "AtomicWriter",
    "LocalStorage",
    "NotFoundError",
    "S3Storage",
    "SignatureError",
    "SignatureExpiredError",
    "SignedParams",
    "SignedRequest",
    "Storage",
    "StorageError",
    "StorageKeyError",
    "TooLargeError",
    "TransferReport",
    "check_key",
    "storage_from_settings",
]


def storage_from_settings(settings: Settings) -> Storage:
    """``file:///ABS/PATH`` -> :class:`LocalStorage`; ``s3://BUCKET[/PREFIX]`` -> :class:`S3Storage`
    (endpoint and region from the settings, credentials from boto3's chain); else :class:`StorageError`."""
    url = settings.resolved_storage_url
    parts = urlsplit(url)
    if parts.scheme == "file":
        # The path is taken literally (not percent-decoded): it is how settings.resolved_storage_url
        # writes data_dir, spaces included.
        path = url[len("file://") :]
        if parts.netloc == "localhost":
            path = path[len("localhost") :]
        if not path.startswith("/") or parts.query or parts.fragment:
            raise StorageError(f"SYNCTALK_STORAGE_URL must be file:///ABSOLUTE/PATH, not {url!r}.")
        return LocalStorage(Path(path), settings.secret_key, settings.public_url)
    if parts.scheme == "s3":
        if not parts.netloc or parts.username or parts.password or parts.query or parts.fragment:
            raise StorageError("SYNCTALK_STORAGE_URL must be s3://BUCKET[/PREFIX] (credentials go in AWS_*).")
        from shared.storage.s3 import S3Storage

        return S3Storage(
            parts.netloc, parts.path.strip("/"), settings.s3_endpoint_url, settings.s3_region,
            public_endpoint_url=settings.s3_public_endpoint_url,
        )  # fmt: skip
    raise StorageError(
        f"SYNCTALK_STORAGE_URL must start with file:// or s3://, not {parts.scheme or 'nothing'!r}."
    )


def __getattr__(name: str) -> object:
    if name == "S3Storage":  # imported lazily: boto3 is heavy
        from shared.storage.s3 import S3Storage

        return S3Storage
    raise AttributeError(name)
