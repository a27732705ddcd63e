"""Probe backend using a system ffprobe (JSON output), preferred when one is installed."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpu_worker.media import process
from gpu_worker.media.errors import NotMediaError, TruncatedMediaError
from gpu_worker.media.info import (
    AudioStreamInfo,
    MediaInfo,
    VideoStreamInfo,
    clockwise_from_display_matrix,
    display_size,
    is_variable_rate,
)
from gpu_worker.media.safety import SAFE_INPUT_OPTIONS, ffmpeg_url, looks_like_mp4

if TYPE_CHECKING:
    from collections.abc import Callable

_TIMESTAMP_SAMPLE = 600


def _safe_args() -> list[str]:
    args: list[str] = []
    for key, value in SAFE_INPUT_OPTIONS.items():
        args += [f"-{key}", value]
    return args


def probe_ffprobe(
    exe: str, p: Path, shown: str, check_dims: Callable[[int, int], None], timeout: float
) -> MediaInfo:
    cmd = [exe, "-v", "error", *_safe_args(), "-print_format", "json", "-show_format", "-show_streams"]
    try:
        out = process.run([*cmd, ffmpeg_url(p)], timeout=timeout, shown=shown, action="probe")
    except NotMediaError:
        if looks_like_mp4(p):
            raise TruncatedMediaError(
                f"{shown} looks like an MP4/MOV file but is incomplete (truncated?)."
            ) from None
        raise
    # tags are the file's own bytes, not always UTF-8 (a hostile or corrupted INFO chunk)
    data = json.loads((out or b"{}").decode("utf-8", "replace"))
    timestamps: list[int] = []
    vjson = _first(data, "video")
    if vjson is not None:
        check_dims(int(vjson.get("width", 0)), int(vjson.get("height", 0)))
        timestamps = _packet_timestamps(exe, p, shown, timeout)
    return parse_ffprobe_json(data, p, timestamps)


def _packet_timestamps(exe: str, p: Path, shown: str, timeout: float) -> list[int]:
    """Presentation timestamps of the first video packets (demux only, no decoding)."""
    cmd = [exe, "-v", "error", *_safe_args(), "-select_streams", "v:0", "-read_intervals",
           f"%+#{_TIMESTAMP_SAMPLE}", "-show_entries", "packet=pts", "-print_format", "json", ffmpeg_url(p)]  # fmt: skip
    data = json.loads(process.run(cmd, timeout=timeout, shown=shown, action="probe") or b"{}")
    return [int(pk["pts"]) for pk in data.get("packets", []) if str(pk.get("pts", "")).lstrip("-").isdigit()]


def _first(data: dict[str, Any], kind: str) -> dict[str, Any] | None:
    for s in data.get("streams", []):
        if s.get("codec_type") == kind and not s.get("disposition", {}).get("attached_pic"):
            return s
    return None


def _rate(text: str | None) -> float:
    try:
        r = Fraction(text or "0/1")
    except (ValueError, ZeroDivisionError):
        return 0.0
    return float(r)


def _float(value: Any, default: float = 0.0) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


def _rotation(s: dict[str, Any]) -> int:
    for sd in s.get("side_data_list", []) or []:
        if "rotation" in sd:
            return clockwise_from_display_matrix(_float(sd["rotation"]))
    tag = s.get("tags", {}).get("rotate")
    return int(_float(tag)) % 360 if tag is not None else 0


def parse_ffprobe_json(data: dict[str, Any], p: Path, timestamps: list[int]) -> MediaInfo:
    """Turn ``ffprobe -show_format -show_streams`` JSON into a MediaInfo (pure: unit-testable)."""
    fmt = data.get("format", {})
    duration = _float(fmt.get("duration"))
    video = None
    if (v := _first(data, "video")) is not None:
        w, h = int(v.get("width", 0)), int(v.get("height", 0))
        fps, avg = _rate(v.get("r_frame_rate")), _rate(v.get("avg_frame_rate"))
        avg = avg or fps
        v_dur = _float(v.get("duration"), duration)
        rotation = _rotation(v)
        dw, dh = display_size(w, h, rotation)
        video = VideoStreamInfo(
            codec=v.get("codec_name", "unknown"),
            width=w,
            height=h,
            display_width=dw,
            display_height=dh,
            rotation_deg=rotation,
            fps=fps,
            avg_fps=avg,
            variable_frame_rate=is_variable_rate(timestamps, fps, avg),
            frame_count=int(_float(v.get("nb_frames"))) or round(v_dur * avg),
            duration_s=v_dur,
        )
    audio = None
    if (a := _first(data, "audio")) is not None:
        audio = AudioStreamInfo(
            codec=a.get("codec_name", "unknown"),
            sample_rate=int(_float(a.get("sample_rate"))),
            channels=int(a.get("channels", 0)),
            duration_s=_float(a.get("duration"), duration),
        )
    return MediaInfo(
        path=str(p),
        format_name=fmt.get("format_name", ""),
        size_bytes=int(_float(fmt.get("size"), p.stat().st_size if p.exists() else 0)),
        duration_s=duration,
        video=video,
        audio=audio,
        backend="ffprobe",
    )
