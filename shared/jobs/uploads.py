"""An upload's bytes, wherever they are stored: a whole object (presigned and direct uploads) or a part
of a shared one (files sent inline with ``POST /v1/uploads/files`` are stored one object per call)."""

from __future__ import annotations

from pathlib import Path

from shared.db.models import Upload
from shared.storage import Storage


def fetch_upload(storage: Storage, upload: Upload, path: Path) -> Path:
    """Download ``upload``'s file to ``path`` (atomically); one ranged read for a part."""
    if upload.part_offset is None:
        return storage.get_file(upload.storage_key, path)
    return storage.get_range(upload.storage_key, upload.part_offset, upload.bytes, path)
