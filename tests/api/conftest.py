"""Fixtures of the API tests; the helpers themselves live in api_helpers.py."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from api_helpers import Api, Receiver, make_api

from gpu_worker.media.binaries import ffmpeg_exe


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    """The app on a migrated SQLite file, a storage folder and the embedded broker; one tenant + key."""
    made = make_api(tmp_path)
    yield made
    made.close()


@pytest.fixture
def receivers() -> Iterator[Callable[..., Receiver]]:
    """``receivers(answers, tls=None)``: webhook endpoints on free ports, closed after the test."""
    made: list[Receiver] = []

    def make(answers: list[int] | None = None, tls=None) -> Receiver:
        made.append(Receiver(answers, tls))
        return made[-1]

    yield make
    for r in made:
        r.close()


def _ffmpeg(out: Path, *args: str) -> bytes:
    subprocess.run([ffmpeg_exe(), "-v", "error", "-y", "-nostdin", *args, str(out)], check=True, timeout=60)
    return out.read_bytes()


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """A 3 s talking video (64x48, a tone) and a 3 s speech track (AAC), made once per module."""
    d = tmp_path_factory.mktemp("contract-media")
    video = ["-f", "lavfi", "-i", "testsrc=size=64x48:rate=25:duration=3"]
    sine = ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=16000:duration=3"]
    return {
        "video": _ffmpeg(
            d / "talk.mp4",
            *video,
            *sine,
            "-c:v",
            "libx264",
            "-pix_fmt",
            "yuv420p",
            "-preset",
            "ultrafast",
            "-c:a",
            "aac",
            "-shortest",
        ),  # fmt: skip
        "speech": _ffmpeg(d / "speech.m4a", *sine, "-c:a", "aac"),
    }
