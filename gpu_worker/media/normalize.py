"""Bring any accepted upload to the form every later stage assumes.

Video: constant frame rate (25 fps by default, frames dropped/repeated by timestamp), rotation applied
to the pixels (ffmpeg autorotates while decoding; the output carries no rotation metadata), even frame
size, H.264 yuv420p, audio kept as AAC. Audio: mono 16-bit PCM WAV at 16 kHz. Both probe the input
first (safety and limits) and the output after (so a broken result never reaches the final path).
"""

from __future__ import annotations

import dataclasses
import os
import uuid
from collections.abc import Callable
from pathlib import Path

from gpu_worker.media import process
from gpu_worker.media.errors import MediaDecodeError
from gpu_worker.media.info import AudioStreamInfo, MediaInfo
from gpu_worker.media.probe import probe
from gpu_worker.media.safety import SAFE_INPUT_OPTIONS, ffmpeg_url
from shared.settings import Settings

Progress = Callable[[str, float, str], None]


def _tmp_beside(dst: Path) -> Path:
    # Same folder (os.replace stays atomic), same suffix (ffmpeg picks the muxer from it), hidden name.
    return dst.with_name(f".{dst.stem}.partial-{uuid.uuid4().hex[:8]}{dst.suffix}")


def normalize_video(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    settings: Settings,
    *,
    fps: float = 25.0,
    size: tuple[int, int] | None = None,
    keep_audio: bool = True,
    crf: int = 18,
    progress: Progress | None = None,
) -> MediaInfo:
    """Re-encode ``src`` to ``dst`` (.mp4) at a constant ``fps``, upright, optionally scaled to ``size``
    (width, height; even numbers). Returns the probe of the written file."""
    import ffmpeg

    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    if size is not None and (size[0] <= 0 or size[1] <= 0 or size[0] % 2 or size[1] % 2):
        raise ValueError(f"size must be positive even (width, height) for H.264 4:2:0, got {size}")
    info = probe(src, settings, require_video=True)
    shown = Path(info.path).name
    dst = Path(dst).absolute()
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_beside(dst)

    inp = ffmpeg.input(ffmpeg_url(Path(info.path)), **SAFE_INPUT_OPTIONS)
    video = inp["v:0"].filter("fps", fps=fps)
    if size is not None:
        video = video.filter("scale", size[0], size[1])
    else:  # 4:2:0 chroma needs even sizes; odd phone crops lose one pixel row/column
        video = video.filter("scale", "trunc(iw/2)*2", "trunc(ih/2)*2")
    streams = [video]
    args: dict = {
        "vcodec": "libx264",
        "crf": crf,
        "pix_fmt": "yuv420p",
        "fps_mode": "cfr",
        "movflags": "+faststart",
    }
    if keep_audio and info.audio is not None:
        streams.append(inp["a:0"])
        args.update(acodec="aac", ac=min(2, max(1, info.audio.channels)))
    cmd = process.compile_cmd(
        ffmpeg.output(*streams, str(tmp), **args),
        extra_global=["-progress", "pipe:1", "-stats_period", "0.5"],
    )
    try:
        _run_with_progress(cmd, settings, shown, info.duration_s, progress)
        out = probe(tmp, settings, require_video=True)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    if progress:
        progress("normalize_video", 1.0, f"{shown}: {out.video.frame_count} frames at {fps:g} fps")
    return dataclasses.replace(out, path=str(dst))


def _run_with_progress(
    cmd: list[str], settings: Settings, shown: str, total_s: float, progress: Progress | None
) -> None:
    """Run ffmpeg reading its ``-progress`` key=value lines; the watchdog limits each silent stretch."""
    proc = process.Process(cmd, timeout=settings.ffmpeg_timeout_s, stdin=False, stdout=True)
    try:
        while True:
            with proc.busy():
                line = proc.proc.stdout.readline()
            if not line:
                break
            key, _, value = line.decode(errors="replace").strip().partition("=")
            if key == "out_time_us" and progress and total_s > 0 and value.isdigit():
                done = min(1.0, int(value) / 1e6 / total_s)
                progress("normalize_video", done, f"{shown}: {done * 100:.0f}%")
        proc.finish(shown, "normalize")
    finally:
        proc.close()


def normalize_audio(
    src: str | os.PathLike[str], dst_wav: str | os.PathLike[str], settings: Settings, *, rate: int = 16000
) -> AudioStreamInfo:
    """Decode the first audio stream of ``src`` (audio or video file) to mono s16 PCM WAV at ``rate``."""
    import ffmpeg

    if rate <= 0:
        raise ValueError(f"rate must be positive, got {rate}")
    info = probe(src, settings, require_video=False, require_audio=True)
    shown = Path(info.path).name
    dst = Path(dst_wav).absolute()
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_beside(dst)
    inp = ffmpeg.input(ffmpeg_url(Path(info.path)), **SAFE_INPUT_OPTIONS)["a:0"]
    cmd = process.compile_cmd(inp.output(str(tmp), format="wav", acodec="pcm_s16le", ac=1, ar=rate))
    try:
        process.run(cmd, timeout=settings.ffmpeg_timeout_s, shown=shown, action="normalize")
        out = probe(tmp, settings, require_video=False, require_audio=True)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    if out.audio is None:  # pragma: no cover - probe(require_audio=True) raised already
        raise MediaDecodeError(f"{shown}: no audio in the normalized output.")
    return out.audio
