"""Probe backend built on PyAV (libav* in-process): always available, used when there is no ffprobe."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from gpu_worker.media.errors import MediaError, NotMediaError, TruncatedMediaError, UnsafeMediaError
from gpu_worker.media.info import (
    AudioStreamInfo,
    MediaInfo,
    VideoStreamInfo,
    clockwise_from_display_matrix,
    display_size,
    is_variable_rate,
)
from gpu_worker.media.safety import SAFE_INPUT_OPTIONS, looks_like_mp4

if TYPE_CHECKING:
    from collections.abc import Callable

_TIMESTAMP_SAMPLE = 600  # packets demuxed (not decoded) to judge frame timing when there is no index
_ISO_BMFF = ("mov", "mp4")


def probe_pyav(p: Path, shown: str, check_dims: Callable[[int, int], None]) -> MediaInfo:
    """Describe ``p``. ``check_dims(w, h)`` runs before any frame is decoded (limits, absurd sizes)."""
    import av

    try:
        container = av.open(str(p), options=dict(SAFE_INPUT_OPTIONS), timeout=30.0, metadata_errors="replace")
    except av.error.FFmpegError as exc:
        raise _open_error(p, shown, exc) from None
    with container:
        fmt = container.format.name
        duration = container.duration / 1e6 if container.duration else 0.0
        video = _video(container, p, shown, duration, check_dims)
        audio = _audio(container, duration)
        if duration <= 0:
            duration = max(video.duration_s if video else 0.0, audio.duration_s if audio else 0.0)
        return MediaInfo(
            path=str(p),
            format_name=fmt,
            size_bytes=p.stat().st_size,
            duration_s=duration,
            video=video,
            audio=audio,
            backend="pyav",
        )


def _open_error(p: Path, shown: str, exc: Exception) -> MediaError:
    msg = str(exc)
    if "whitelist" in msg.lower() or getattr(exc, "errno", None) == 22:
        # EINVAL on open is how libavformat reports a demuxer refused by format_whitelist.
        return UnsafeMediaError(
            f"{shown}: its format is not an accepted audio/video container (images, playlists and stream "
            "descriptions are refused; see docs/MEDIA.md)."
        )
    if looks_like_mp4(p):
        # An MP4/MOV whose index (moov atom, usually written last) is missing: an interrupted copy.
        return TruncatedMediaError(f"{shown} looks like an MP4/MOV file but is incomplete (truncated?).")
    return NotMediaError(f"{shown} is not a recognised audio or video file.")


def _video(container, p: Path, shown: str, duration: float, check_dims) -> VideoStreamInfo | None:
    import av

    streams = [s for s in container.streams.video if not (s.disposition & av.stream.Disposition.attached_pic)]
    if not streams:
        return None
    s = streams[0]
    cc = s.codec_context
    check_dims(cc.width, cc.height)
    fps = float(s.base_rate or s.guessed_rate or 0)
    avg = float(s.average_rate or 0) or fps
    s_dur = float(s.duration * s.time_base) if s.duration and s.time_base else duration
    fmt = container.format.name
    if any(n in fmt.split(",") for n in _ISO_BMFF):
        _check_complete(container, p, shown)
    timestamps = _timestamps(container, s)
    frames = int(s.frames) or round(s_dur * avg)
    rotation = _rotation(container, s, shown)
    dw, dh = display_size(cc.width, cc.height, rotation)
    return VideoStreamInfo(
        codec=cc.name,
        width=cc.width,
        height=cc.height,
        display_width=dw,
        display_height=dh,
        rotation_deg=rotation,
        fps=fps,
        avg_fps=avg,
        variable_frame_rate=is_variable_rate(timestamps, fps, avg),
        frame_count=frames,
        duration_s=s_dur,
    )


def check_complete(p: Path, shown: str) -> None:
    """Completeness check on its own (the ffprobe backend uses it for MP4/MOV files)."""
    import av

    with av.open(
        str(p), options=dict(SAFE_INPUT_OPTIONS), timeout=30.0, metadata_errors="replace"
    ) as container:
        _check_complete(container, p, shown)


def _check_complete(container, p: Path, shown: str) -> None:
    """An MP4 with its index first ("faststart") opens fine when cut short; its samples then point past
    the end of the file. Checking the index costs no I/O."""
    size = p.stat().st_size
    for st in container.streams:
        entries = st.index_entries
        if len(entries) and max(e.pos + e.size for e in entries) > size:
            raise TruncatedMediaError(f"{shown} is truncated: its index points past the end of the file.")


def _timestamps(container, stream) -> list[int]:
    entries = stream.index_entries
    if len(entries) >= min(int(stream.frames or 0), _TIMESTAMP_SAMPLE) > 0:
        return [e.timestamp for e in entries[:_TIMESTAMP_SAMPLE]]
    out: list[int] = []
    for packet in container.demux(stream):
        if packet.pts is not None:
            out.append(packet.pts)
        if len(out) >= _TIMESTAMP_SAMPLE:
            break
    return out


def _rotation(container, stream, shown: str) -> int:
    """Rotation lives in display-matrix side data, which PyAV exposes on decoded frames only, so decode
    the first frame (dimensions were checked before this)."""
    import av

    try:
        container.seek(0, stream=stream)
        for frame in container.decode(stream):
            return clockwise_from_display_matrix(frame.rotation or 0)
    except av.error.FFmpegError as exc:
        raise NotMediaError(f"{shown}: the video stream cannot be decoded ({exc}).") from None
    rotate_tag = stream.metadata.get("rotate")
    return int(rotate_tag) % 360 if rotate_tag and rotate_tag.lstrip("-").isdigit() else 0


def _audio(container, duration: float) -> AudioStreamInfo | None:
    if not container.streams.audio:
        return None
    s = container.streams.audio[0]
    cc = s.codec_context
    channels = cc.layout.nb_channels if cc.layout else getattr(cc, "channels", 0)
    s_dur = float(s.duration * s.time_base) if s.duration and s.time_base else duration
    return AudioStreamInfo(
        codec=cc.name, sample_rate=int(cc.sample_rate), channels=int(channels), duration_s=s_dur
    )
