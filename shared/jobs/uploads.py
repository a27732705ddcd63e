"""An upload's bytes, wherever they are stored: a whole object (presigned and direct uploads) or a part
of a shared one (files sent inline with ``POST /v1/uploads/files`` are stored one object per call)."""

from __future__ import annotations

from pathlib import Path

from shared.db.models import Upload
from shared.storage import Storage, StorageError


class UploadChangedError(StorageError):
    """The stored file is not the one the API checked: its size differs from the upload's (the client
    PUT another file to the upload's URL after it was checked). Permanent: the job fails."""

    code = "upload_changed"


def fetch_upload(storage: Storage, upload: Upload, path: Path) -> Path:
    """Download ``upload``'s file to ``path`` (atomically); one ranged read for a part. A whole object
    whose size is not the upload's is refused before anything is downloaded (UploadChangedError)."""
    if upload.part_offset is not None:  # a ranged read of exactly ``bytes``: fewer is a StorageError
        return storage.get_range(upload.storage_key, upload.part_offset, upload.bytes, path)
    _check_size(upload, storage.size(upload.storage_key))
    got = storage.get_file(upload.storage_key, path)
    try:  # replaced between the two requests: the same check on what arrived
        _check_size(upload, got.stat().st_size)
    except UploadChangedError:
        got.unlink(missing_ok=True)
        raise
    return got


def _check_size(upload: Upload, stored: int) -> None:
    if stored != upload.bytes:
        raise UploadChangedError(
            f"The file of upload {upload.id} now holds {stored} bytes, not the {upload.bytes} it was "
            "checked with; upload it again.",
            key=upload.storage_key,
        )
