"""Where the ffmpeg and ffprobe executables come from.

A system ffmpeg on PATH wins (distribution builds get security updates); otherwise the static binary
shipped in the imageio-ffmpeg wheel is used, so ``pip install`` alone gives a working platform. That
wheel carries no ffprobe, so ``ffprobe_exe()`` may return None and probing then falls back to PyAV.
"""

from __future__ import annotations

import shutil
from functools import lru_cache

from gpu_worker.media.errors import MediaError


@lru_cache(maxsize=1)
def ffmpeg_exe() -> str:
    """Path of the ffmpeg executable: system one if on PATH, else imageio-ffmpeg's bundled binary."""
    found = shutil.which("ffmpeg")
    if found:
        return found
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except Exception as exc:  # noqa: BLE001 - any failure here means "no ffmpeg", reported once
        raise MediaError(
            "No ffmpeg found: install ffmpeg on PATH or the imageio-ffmpeg package "
            f"(pip install imageio-ffmpeg): {exc}"
        ) from exc


@lru_cache(maxsize=1)
def ffprobe_exe() -> str | None:
    """Path of a system ffprobe, or None when there is none (callers fall back to PyAV)."""
    return shutil.which("ffprobe")
