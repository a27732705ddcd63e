"""``probe()``: validate a user file and describe its streams, with limits from settings applied.

ffprobe is used where a system one exists, otherwise PyAV; both give the same MediaInfo. Nothing is
decoded before the path, content sniff and frame dimensions have passed their checks.
"""

from __future__ import annotations

import os
from pathlib import Path

from gpu_worker.media.binaries import ffprobe_exe
from gpu_worker.media.errors import MediaTooLargeError, NoAudioStreamError, NotMediaError, NoVideoStreamError
from gpu_worker.media.info import AudioStreamInfo, MediaInfo, VideoStreamInfo
from gpu_worker.media.safety import check_format_name, check_input_path
from shared.settings import Settings, get_settings

__all__ = ["AudioStreamInfo", "MediaInfo", "VideoStreamInfo", "probe", "probe_head"]


def probe(
    path: str | os.PathLike[str],
    settings: Settings | None = None,
    *,
    require_video: bool = True,
    require_audio: bool = False,
    backend: str | None = None,
) -> MediaInfo:
    """Check ``path`` is a safe, complete media file within limits and describe it.

    ``backend``: "ffprobe" or "pyav" to force one (tests); None picks ffprobe when installed.
    Raises a MediaError subclass (see gpu_worker.media.errors) for every refused input.
    """
    settings = settings or get_settings()
    shown = Path(os.fspath(path)).name or os.fspath(path)
    p = check_input_path(path, max_bytes=settings.media_max_bytes)

    def check_dims(width: int, height: int) -> None:
        _check_dims(width, height, settings, shown)

    exe = ffprobe_exe() if backend in (None, "ffprobe") else None
    if backend == "ffprobe" and exe is None:
        raise RuntimeError("backend='ffprobe' asked for but no ffprobe is installed")
    if exe is not None:
        from gpu_worker.media.probe_ffprobe import probe_ffprobe
        from gpu_worker.media.probe_pyav import check_complete

        info = probe_ffprobe(exe, p, shown, check_dims, settings.ffmpeg_timeout_s)
        check_format_name(info.format_name, shown)
        if set(info.format_name.split(",")) & {"mov", "mp4"}:
            check_complete(p, shown)
    else:
        from gpu_worker.media.probe_pyav import probe_pyav

        info = probe_pyav(p, shown, check_dims)
        check_format_name(info.format_name, shown)

    if info.video is None and info.audio is None:
        raise NotMediaError(f"{shown} contains no audio or video stream.")
    if require_video and info.video is None:
        raise NoVideoStreamError(f"{shown} has no video stream; a video of the person is needed.")
    if require_audio and info.audio is None:
        raise NoAudioStreamError(f"{shown} has no audio stream; speech audio is needed.")
    check_limits(info, settings, shown)
    return info


def probe_head(head: bytes, size: int, shown: str, settings: Settings | None = None) -> MediaInfo | None:
    """``probe()``'s verdict on an audio file from its first ``HEAD_BYTES`` and its size alone, where the
    header says everything (plain PCM WAV, see probe_wav); ``None``: run ``probe()`` on the whole file.
    Limits are applied as ``probe()`` applies them."""
    from gpu_worker.media.probe_wav import probe_wav_header

    settings = settings or get_settings()
    info = probe_wav_header(head, size, shown)
    if info is None:
        return None
    if size > settings.media_max_bytes:
        raise MediaTooLargeError(
            f"{shown} is {size / 1e6:.1f} MB; the limit is {settings.media_max_bytes / 1e6:.1f} MB."
        )
    check_limits(info, settings, shown)
    return info


def _check_dims(width: int, height: int, settings: Settings, shown: str) -> None:
    if width <= 0 or height <= 0:
        raise NotMediaError(f"{shown}: the video stream has no valid frame size ({width}x{height}).")
    if width > settings.media_max_width or height > settings.media_max_height:
        raise MediaTooLargeError(
            f"{shown} is {width}x{height} pixels; the limit is "
            f"{settings.media_max_width}x{settings.media_max_height}."
        )


def check_limits(info: MediaInfo, settings: Settings, shown: str) -> None:
    if info.duration_s > settings.media_max_duration_s:
        raise MediaTooLargeError(
            f"{shown} lasts {info.duration_s:.1f} s; the limit is {settings.media_max_duration_s:.0f} s."
        )
    v = info.video
    if v is not None:
        _check_dims(v.width, v.height, settings, shown)
        if v.frame_count > settings.media_max_frames:
            raise MediaTooLargeError(
                f"{shown} has {v.frame_count} frames; the limit is {settings.media_max_frames}."
            )
        if v.duration_s > settings.media_max_duration_s:
            raise MediaTooLargeError(
                f"{shown}'s video lasts {v.duration_s:.1f} s; the limit is {settings.media_max_duration_s:.0f} s."
            )
    a = info.audio
    if a is not None and a.duration_s > settings.media_max_duration_s:
        raise MediaTooLargeError(
            f"{shown}'s audio lasts {a.duration_s:.1f} s; the limit is {settings.media_max_duration_s:.0f} s."
        )
