"""What a probe returns: one frozen description of a media file, whichever backend produced it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class VideoStreamInfo:
    codec: str
    width: int  # coded frame size, before rotation
    height: int
    display_width: int  # size as shown to a viewer, after rotation (what decoding with autorotate yields)
    display_height: int
    rotation_deg: int  # clockwise rotation applied on display: 0, 90, 180 or 270
    fps: float  # nominal rate (ffmpeg's r_frame_rate)
    avg_fps: float  # frames / duration (ffmpeg's avg_frame_rate)
    variable_frame_rate: bool  # frame durations differ (from the timestamps), or nominal != average rate
    frame_count: int  # from the container when stored, else estimated from duration * avg_fps
    duration_s: float


@dataclass(frozen=True)
class AudioStreamInfo:
    codec: str
    sample_rate: int
    channels: int
    duration_s: float


@dataclass(frozen=True)
class MediaInfo:
    path: str
    format_name: str  # ffmpeg demuxer name, e.g. "mov,mp4,m4a,3gp,3g2,mj2"
    size_bytes: int
    duration_s: float
    video: VideoStreamInfo | None
    audio: AudioStreamInfo | None
    backend: str  # "ffprobe" or "pyav"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def display_size(width: int, height: int, rotation_deg: int) -> tuple[int, int]:
    """(width, height) after a rotation: quarter turns swap the axes."""
    return (height, width) if rotation_deg % 180 == 90 else (width, height)


def clockwise_from_display_matrix(ccw_deg: float) -> int:
    """ffmpeg reports the display matrix angle counter-clockwise (av_display_rotation_get, PyAV's
    ``frame.rotation``); the legacy ``rotate`` tag and our field are clockwise. Snap to quarter turns."""
    return int(round(-ccw_deg / 90.0)) * 90 % 360


def is_variable_rate(timestamps: list[int], fps: float, avg_fps: float) -> bool:
    """True when frame durations (from presentation timestamps, any order) are not all alike.

    A duration counts as different when it is off the median by more than 10 % and more than one tick,
    so the rounding of a coarse time base (30 fps in milliseconds: 33, 33, 34) is not mistaken for VFR.
    """
    if fps > 0 and avg_fps > 0 and abs(fps - avg_fps) / fps > 0.01:
        return True
    ts = sorted(set(timestamps))
    deltas = [b - a for a, b in zip(ts, ts[1:], strict=False)]
    if len(deltas) < 2:
        return False
    median = sorted(deltas)[len(deltas) // 2]
    return any(abs(d - median) > max(1, 0.1 * median) for d in deltas)
