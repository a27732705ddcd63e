"""Uploads checked before any work is queued: a subject video or a speech track, sent directly
(multipart) or through a presigned upload, is probed by the media layer; a hostile or unusable file is
refused (413/422 problem JSON) and queues nothing.

Files stream to a temporary file (the direct upload) or from storage (a presigned one), never into
memory; the probe runs on that local file only (ffmpeg never sees a URL).
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from datetime import timedelta
from pathlib import Path

from fastapi import UploadFile
from sqlalchemy import select

from services.api.problems import ApiProblem
from shared.db.models import Upload, utcnow
from shared.errors import SyncTalkError
from shared.jobs import keys

CHUNK = 1 << 20
VIDEO, AUDIO = "video", "audio"


def safe_filename(name: str | None) -> str:
    """A display name only (never a path): the last component, harmless characters, at most 120."""
    base = re.split(r"[\\/]", name or "")[-1]
    base = re.sub(r"[^A-Za-z0-9._ -]", "_", base).strip(" .")[:120]
    return base or "upload"


def save_part(part: UploadFile, folder: Path, max_bytes: int) -> tuple[Path, int, str]:
    """Copy a multipart file to ``folder`` in chunks, refusing more than ``max_bytes``: (path, size, sha256)."""
    path = folder / "upload"
    digest, size = hashlib.sha256(), 0
    with open(path, "wb") as out:
        while chunk := part.file.read(CHUNK):
            size += len(chunk)
            if size > max_bytes:
                raise ApiProblem(413, "file_too_large", f"The file is larger than {max_bytes / 1e6:.0f} MB.")
            digest.update(chunk)
            out.write(chunk)
    if size == 0:
        raise ApiProblem(422, "empty_file", "The file is empty (0 bytes).")
    return path, size, digest.hexdigest()


def probe_media(path: Path, kind: str, settings, shown: str) -> dict:
    """The media layer's verdict on a local file: its description, or a typed error (problem JSON)."""
    from gpu_worker.media.probe import probe
    from gpu_worker.preprocess.errors import ClipTooShortError

    # the probe names the file in its messages: give it the client's name, not our temp path (some
    # messages name the whole path it was given: that is cut down to the name too)
    with tempfile.TemporaryDirectory() as d:
        link = Path(d) / shown
        os.symlink(path, link)
        try:
            info = probe(link, settings, require_video=kind == VIDEO, require_audio=True)
        except SyncTalkError as exc:
            for server_path in (str(link), str(Path(path).resolve()), str(path)):
                exc.message = exc.message.replace(server_path, shown)
            exc.args = (exc.message,)
            raise
    if kind == VIDEO and info.video.duration_s < settings.min_train_seconds:
        raise ClipTooShortError(
            f"{shown} lasts {info.video.duration_s:.1f} s; a subject needs at least "
            f"{settings.min_train_seconds:g} s of the person talking (3 to 10 minutes is best)"
        )
    data = info.to_dict()
    data.pop("path", None)  # a server path is nobody's business
    return data


def store_direct(platform, session, tenant_id: str, part: UploadFile, kind: str) -> Upload:
    """A multipart file: saved, probed, stored, recorded as a received upload (not yet committed)."""
    settings = platform.settings
    shown = safe_filename(part.filename)
    with tempfile.TemporaryDirectory(prefix="synctalk-upload-") as d:
        path, size, _ = save_part(part, Path(d), settings.direct_upload_max_bytes)
        info = probe_media(path, kind, settings, shown)
        upload = Upload(
            tenant_id=tenant_id, filename=shown, content_type=part.content_type or "application/octet-stream",
            bytes=size, storage_key="", status="received", probe=info,
            expires_at=utcnow() + timedelta(seconds=settings.upload_expiry_s),
        )  # fmt: skip
        session.add(upload)
        session.flush()
        upload.storage_key = keys.upload_key(tenant_id, upload.id)
        platform.storage.put_file(upload.storage_key, path, content_type=upload.content_type)
    return upload


def checked_upload(platform, session, tenant_id: str, upload_id: str, kind: str) -> Upload:
    """A presigned upload named by id: the tenant's own, complete, and probed (once: the verdict is
    kept on the row)."""
    upload = session.scalars(
        select(Upload).where(Upload.tenant_id == tenant_id, Upload.id == upload_id)
    ).first()
    if upload is None:
        raise ApiProblem(404, "upload_not_found", f"There is no upload {upload_id!r}.")
    if upload.status == "refused":
        raise ApiProblem(
            422, "upload_refused", "This upload was refused when it was checked; upload the file again."
        )
    if upload.status == "received" and upload.probe is not None:
        _check_kind(upload, kind, platform.settings)
        return upload
    if not platform.storage.exists(upload.storage_key):
        raise ApiProblem(
            422, "upload_incomplete", f"Upload {upload_id} has no data yet: PUT the file to its URL first."
        )
    # The verdict is kept on the row and committed at once: call this before the request writes
    # anything else. It is about the file, not this use of it (an audio file refused as a subject's
    # video makes a fine speech track): whatever no use can take is refused for good, the rest is
    # checked for this use by _check_kind, now and at every later use.
    stored = platform.storage.size(upload.storage_key)
    if stored < upload.bytes:  # an interrupted PUT: the client may send the rest again
        raise ApiProblem(
            422, "upload_incomplete",
            f"Upload {upload_id} holds {stored} of the {upload.bytes} bytes announced: PUT the whole file again.",
        )  # fmt: skip
    from gpu_worker.media.errors import MediaError

    with tempfile.TemporaryDirectory(prefix="synctalk-upload-") as d:
        local = platform.storage.get_file(upload.storage_key, Path(d) / "upload")
        try:
            upload.probe = probe_media(local, AUDIO, platform.settings, upload.filename)
        except MediaError:  # the file itself is unusable (a storage or timeout hiccup is not its fault)
            upload.status = "refused"
            session.commit()
            raise
    upload.status = "received"
    upload.bytes = platform.storage.size(upload.storage_key)
    session.commit()
    _check_kind(upload, kind, platform.settings)
    return upload


def _check_kind(upload: Upload, kind: str, settings) -> None:
    """An upload probed before (perhaps for the other use) checked again for this one."""
    from gpu_worker.preprocess.errors import ClipTooShortError

    probe = upload.probe or {}
    if not probe.get("audio"):
        raise ApiProblem(
            422, "no_audio_stream", f"{upload.filename} has no audio stream; speech audio is needed."
        )
    if kind == VIDEO:
        if not probe.get("video"):
            raise ApiProblem(
                422,
                "no_video_stream",
                f"{upload.filename} has no video stream; a video of the person is needed.",
            )
        if probe["video"]["duration_s"] < settings.min_train_seconds:
            raise ClipTooShortError(
                f"{upload.filename} lasts {probe['video']['duration_s']:.1f} s; a subject needs at least "
                f"{settings.min_train_seconds:g} s of the person talking"
            )
