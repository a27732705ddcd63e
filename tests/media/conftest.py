"""Media generated on the fly with our own ffmpeg (lavfi test sources): tiny, fast, no fixtures on disk."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from gpu_worker.media.binaries import ffmpeg_exe


def ffmpeg(*args: str) -> None:
    subprocess.run([ffmpeg_exe(), "-v", "error", "-y", "-nostdin", *args], check=True, timeout=60)


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("media")


def _make(path: Path, *args: str) -> Path:
    if not path.exists():
        ffmpeg(*args, str(path))
    return path


def testsrc(size: str = "64x48", rate: int = 30, seconds: float = 1.0) -> list[str]:
    return ["-f", "lavfi", "-i", f"testsrc=size={size}:rate={rate}:duration={seconds}"]


def sine(rate: int = 44100, seconds: float = 1.0) -> list[str]:
    return ["-f", "lavfi", "-i", f"sine=frequency=440:sample_rate={rate}:duration={seconds}"]


H264 = ["-c:v", "libx264", "-pix_fmt", "yuv420p"]


@pytest.fixture(scope="session")
def clip_30fps(media_dir: Path) -> Path:
    """1 s, 64x48, 30 fps H.264 + 44.1 kHz stereo AAC."""
    return _make(media_dir / "clip30.mp4", *testsrc(), *sine(), "-ac", "2", *H264, "-c:a", "aac")


@pytest.fixture(scope="session")
def clip_faststart(media_dir: Path, clip_30fps: Path) -> Path:
    """Same clip with its index (moov) at the start of the file."""
    return _make(media_dir / "faststart.mp4", "-i", str(clip_30fps), "-c", "copy", "-movflags", "+faststart")


@pytest.fixture(scope="session")
def clip_vfr(media_dir: Path) -> Path:
    """2 s at nominally 30 fps with every third frame dropped and timestamps kept: variable frame rate."""
    return _make(
        media_dir / "vfr.mp4", *testsrc(rate=30, seconds=2), "-vf", "select='not(eq(mod(n\\,3)\\,2))'",
        "-fps_mode", "vfr", *H264,
    )  # fmt: skip


@pytest.fixture(scope="session")
def clip_mkv(media_dir: Path) -> Path:
    """Constant 30 fps in Matroska: millisecond timestamps (33, 33, 34 ms), no per-frame index."""
    return _make(media_dir / "cfr.mkv", *testsrc(), *H264)


@pytest.fixture(scope="session")
def video_only(media_dir: Path) -> Path:
    return _make(media_dir / "video_only.mp4", *testsrc(), *H264)


@pytest.fixture(scope="session")
def audio_48k(media_dir: Path) -> Path:
    """1 s of 48 kHz stereo PCM WAV."""
    return _make(media_dir / "a48k.wav", *sine(48000), "-ac", "2")


@pytest.fixture(scope="session")
def audio_only_m4a(media_dir: Path) -> Path:
    return _make(media_dir / "audio_only.m4a", *sine(44100), "-ac", "2", "-c:a", "aac")


@pytest.fixture(scope="session")
def rotated(media_dir: Path, clip_30fps: Path):
    """Copies of the 64x48 clip with a display matrix: ``rotated(ccw_degrees) -> Path``."""

    def make(ccw: int) -> Path:
        return _make(
            media_dir / f"rot{ccw}.mp4", "-display_rotation", str(ccw), "-i", str(clip_30fps), "-c", "copy"
        )

    return make


@pytest.fixture(params=["pyav", "ffprobe"])
def backend(request: pytest.FixtureRequest) -> str:
    """Each probe test runs on PyAV always and on ffprobe where one is installed."""
    from gpu_worker.media.binaries import ffprobe_exe

    if request.param == "ffprobe" and ffprobe_exe() is None:
        pytest.skip("no ffprobe on PATH: the PyAV backend is used")
    return request.param


@pytest.fixture(scope="session")
def long_clip(media_dir: Path) -> Path:
    """5 s of 320x240 at 25 fps: one frame (230 kB) is bigger than a pipe buffer."""
    return _make(media_dir / "long.mp4", *testsrc("320x240", 25, 5), *H264, "-preset", "ultrafast")
