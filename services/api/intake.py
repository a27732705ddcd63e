"""Uploads checked before any work is queued: a subject video or a speech track, sent directly
(multipart) or through a presigned upload, is probed by the media layer; a hostile or unusable file is
refused (413/422 problem JSON) and queues nothing.

Files stream to a temporary file (the direct upload) or from storage (a presigned one), never into
memory; the probe runs on that local file only (ffmpeg never sees a URL).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from pathlib import Path

from fastapi import UploadFile
from sqlalchemy import select

from services.api.problems import ApiProblem
from shared.db.models import Upload, new_id, utcnow
from shared.errors import SyncTalkError
from shared.jobs import keys
from shared.storage import NotFoundError, StorageError, TooLargeError

log = logging.getLogger(__name__)
CHUNK = 1 << 20
VIDEO, AUDIO = "video", "audio"
# a file sent in the request itself (POST /v1/uploads/files): held in memory while it is checked
INLINE_FILE_MAX = 16 << 20
# what may be uploaded: media, or bytes of unknown type (the probe decides what they are)
ACCEPTED_TYPES = ("video/", "audio/", "application/octet-stream")
CHECK_THREADS = 8  # uploads inspected at once (each waits on storage, and on a probe for non-WAV files)


def media_type(content_type: str | None, shown: str | None = None) -> str:
    """A declared content type, normalized, once it is one uploads may have (415 otherwise)."""
    normalized = (content_type or "application/octet-stream").strip().lower()
    if not normalized.startswith(ACCEPTED_TYPES):
        where = f"{shown}: only" if shown else "Only"
        raise ApiProblem(
            415, "unsupported_media", f"{where} video and audio files are accepted, not {content_type!r}."
        )
    return normalized


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
    from gpu_worker.media.probe_wav import HEAD_BYTES

    if kind != AUDIO:
        return _probe_file(path, kind, settings, shown)
    with open(path, "rb") as fh:
        head, size = fh.read(HEAD_BYTES), os.fstat(fh.fileno()).st_size
    return probe_audio(head, size, shown, settings, lambda _: Path(path))  # the file is already here


def probe_audio(head: bytes, size: int, shown: str, settings, whole: Callable[[Path], Path]) -> dict:
    """The verdict on a file used for its sound, from its first bytes and size where they say everything
    (a plain WAV: no download, no subprocess), else from the whole file, which ``whole(path)`` puts at
    ``path`` (or returns where it already is)."""
    from gpu_worker.media.probe import probe_head

    info = probe_head(head, size, shown, settings)
    if info is not None:
        return _described(info)
    with tempfile.TemporaryDirectory(prefix="synctalk-upload-") as d:
        return _probe_file(whole(Path(d) / "upload"), AUDIO, settings, shown)


def _probe_file(path: Path, kind: str, settings, shown: str) -> dict:
    """The full probe (ffprobe or PyAV) of a local file, its messages naming ``shown``."""
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
    return _described(info)


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


def store_inline(platform, tenant_id: str, parts: list[UploadFile]) -> list[Upload]:
    """Small files sent in the request itself (``POST /v1/uploads/files``): each checked on the check
    threads (a plain WAV from its header, anything else probed), then all stored together as one object
    (one request, not one per file), each row naming its part of it (``part_offset``, ``bytes``); the
    rows (received, not yet added to a session) in the parts' order. All or nothing: the first bad part,
    by position, is raised naming ``items[i]``, and nothing is stored."""
    results: list[tuple[bytes, str, dict] | BaseException] = []
    for future in [_pool().submit(_checked_part, platform.settings, part) for part in parts]:
        try:
            results.append(future.result())
        except Exception as exc:  # noqa: BLE001 -- every part settles before anything is raised
            results.append(exc)
    for i, r in enumerate(results):
        if isinstance(r, ApiProblem):
            raise ApiProblem(r.status, r.code, f"items[{i}]: {r.detail}") from None
        if isinstance(r, SyncTalkError):
            r.message = f"items[{i}]: {r.message}"
            r.args = (r.message,)
            raise r
        if isinstance(r, BaseException):
            raise r
    bundle_key = keys.upload_key(tenant_id, new_id())
    expires = utcnow() + timedelta(seconds=platform.settings.upload_expiry_s)
    uploads, offset = [], 0
    with tempfile.TemporaryDirectory(prefix="synctalk-upload-") as d:
        bundle = Path(d) / "bundle"
        with open(bundle, "wb") as out:
            for (data, content_type, probe), part in zip(results, parts, strict=True):  # type: ignore[misc]
                out.write(data)
                uploads.append(Upload(
                    id=new_id(), tenant_id=tenant_id, filename=safe_filename(part.filename),
                    content_type=content_type, bytes=len(data), storage_key=bundle_key, part_offset=offset,
                    status="received", probe=probe, created_at=utcnow(), expires_at=expires,
                ))  # fmt: skip
                offset += len(data)
        platform.storage.put_file(bundle_key, bundle, content_type="application/octet-stream")
    return uploads


def _checked_part(settings, part: UploadFile) -> tuple[bytes, str, dict]:
    """(the file's bytes, its content type, the probe's description), or the error that refuses it."""
    from gpu_worker.media.probe_wav import HEAD_BYTES

    shown = safe_filename(part.filename)
    content_type = media_type(part.content_type, shown)
    part.file.seek(0)
    data = part.file.read(INLINE_FILE_MAX + 1)
    if len(data) > INLINE_FILE_MAX:
        raise ApiProblem(
            413, "file_too_large",
            f"{shown} is larger than {INLINE_FILE_MAX >> 20} MB, the limit for files sent inline; use POST /v1/uploads.",
        )  # fmt: skip
    if not data:
        raise ApiProblem(422, "empty_file", f"{shown} is empty (0 bytes).")

    def whole(path: Path) -> Path:
        path.write_bytes(data)
        return path

    return data, content_type, probe_audio(data[:HEAD_BYTES], len(data), shown, settings, whole)


@dataclass
class Verdict:
    """What inspecting one stored upload found: its description, or why it cannot be used (yet)."""

    probe: dict | None = None  # the file's description: it is received
    size: int = 0  # bytes stored
    refusal: SyncTalkError | None = None  # the file itself is unusable: refused for good
    problem: ApiProblem | None = None  # not (all) there yet: nothing is recorded, the client may PUT again


def inspect(platform, upload_id: str, storage_key: str, announced: int, filename: str) -> Verdict:
    """Check one stored upload: its size against the announced one (from the header's read: a file
    larger than announced is refused and deleted without reading more), then its header alone where
    that says everything (a plain WAV), else the whole file fetched and probed. No session: safe on a
    thread of its own."""
    from gpu_worker.media.errors import MediaError
    from gpu_worker.media.probe_wav import HEAD_BYTES

    incomplete = f"Upload {upload_id} has no data yet: PUT the file to its URL first."
    try:
        head, stored = platform.storage.read_head(storage_key, HEAD_BYTES)
    except NotFoundError:
        return Verdict(problem=ApiProblem(422, "upload_incomplete", incomplete))
    if stored < announced:  # an interrupted PUT: the client may send the rest again
        return Verdict(problem=ApiProblem(
            422, "upload_incomplete",
            f"Upload {upload_id} holds {stored} of the {announced} bytes announced: PUT the whole file again.",
        ))  # fmt: skip
    if stored > announced:
        return Verdict(refusal=_refuse_oversized(platform, upload_id, storage_key, stored, announced))
    try:
        fetch = partial(platform.storage.get_file, storage_key)
        return Verdict(probe=probe_audio(head, stored, filename, platform.settings, fetch), size=stored)
    except MediaError as exc:  # the file itself is unusable (a storage hiccup is not its fault: raised)
        return Verdict(refusal=exc, size=stored)
    except NotFoundError:  # deleted between the two reads
        return Verdict(problem=ApiProblem(422, "upload_incomplete", incomplete))


def _refuse_oversized(
    platform, upload_id: str, storage_key: str, stored: int, announced: int
) -> TooLargeError:
    """A PUT that carried more than its upload announced (a server that does not enforce the signed
    length let it through): refused from the size alone, before any more than the header is read, so
    a file announced small never costs a large download; its object is deleted at once."""
    try:
        platform.storage.delete(storage_key)
    except StorageError:  # left to retention: a refused upload is never referenced, so it goes once expired
        log.warning("could not delete the oversized upload %s now", upload_id, exc_info=True)
    return TooLargeError(
        f"Upload {upload_id} holds {stored} bytes, more than the {announced} it announced; "
        "create a new upload with the file's exact size."
    )


def checked_uploads(
    platform, session, tenant_id: str, upload_ids: list[str], kind: str
) -> dict[str, Upload | Exception]:
    """Presigned uploads named by id, each the tenant's own, complete and probed, or the error that says
    why not. One query for the rows; the ones not checked before are inspected in parallel (their
    fetches and probes wait on storage and subprocesses) and their verdicts committed together, at once:
    call this before the request writes anything else. A verdict is about the file, not this use of it
    (an audio file refused as a subject's video makes a fine speech track): whatever no use can take is
    refused for good, the rest is checked for this use by _check_kind, now and at every later use."""
    ids = list(dict.fromkeys(upload_ids))
    rows = {
        u.id: u
        for chunk in (ids[i : i + 500] for i in range(0, len(ids), 500))
        for u in session.scalars(select(Upload).where(Upload.tenant_id == tenant_id, Upload.id.in_(chunk)))
    }
    new = [u for u in rows.values() if u.status != "refused" and not (u.status == "received" and u.probe)]
    verdicts = dict(zip(
        (u.id for u in new),
        _pool().map(lambda u: inspect(platform, u.id, u.storage_key, u.bytes, u.filename), new),
        strict=True,
    ))  # fmt: skip
    for upload in new:
        v = verdicts[upload.id]
        if v.refusal is not None:
            upload.status = "refused"
        elif v.probe is not None:
            upload.status, upload.probe, upload.bytes = "received", v.probe, v.size
    if any(v.problem is None for v in verdicts.values()):
        session.commit()

    out: dict[str, Upload | Exception] = {}
    for upload_id in ids:
        upload, v = rows.get(upload_id), verdicts.get(upload_id)
        try:
            if upload is None:
                raise ApiProblem(404, "upload_not_found", f"There is no upload {upload_id!r}.")
            if v is not None and (v.problem or v.refusal):
                raise v.problem or v.refusal
            if upload.status == "refused":
                raise ApiProblem(
                    422,
                    "upload_refused",
                    "This upload was refused when it was checked; upload the file again.",
                )
            _check_kind(upload, kind, platform.settings)
            out[upload_id] = upload
        except (ApiProblem, SyncTalkError) as exc:
            out[upload_id] = exc
    return out


def checked_upload(platform, session, tenant_id: str, upload_id: str, kind: str) -> Upload:
    """One presigned upload, checked (see checked_uploads); its error raised."""
    got = checked_uploads(platform, session, tenant_id, [upload_id], kind)[upload_id]
    if isinstance(got, Exception):
        raise got
    return got


_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    """Threads that inspect uploads, shared by all requests (a batch of 1000 new files uses them all)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max_workers=CHECK_THREADS, thread_name_prefix="upload-check")
        return _POOL


def _described(info) -> dict:
    data = info.to_dict()
    data.pop("path", None)  # a server path is nobody's business
    return data


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
