"""Time limits: a one-shot ffmpeg run and a stalled streaming exchange both end as media_timeout."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from gpu_worker.media import process
from gpu_worker.media.errors import MediaTimeoutError
from gpu_worker.media.normalize import normalize_audio


def test_one_shot_run_is_killed_at_the_limit(audio_48k: Path, tmp_path: Path, settings) -> None:
    tight = settings.model_copy(update={"ffmpeg_timeout_s": 1e-6})
    with pytest.raises(MediaTimeoutError) as err:
        normalize_audio(audio_48k, tmp_path / "a.wav", tight)
    assert err.value.code == "media_timeout"
    assert list(tmp_path.iterdir()) == []


def test_watchdog_kills_a_stalled_child_but_not_an_idle_one() -> None:
    sleeper = [sys.executable, "-c", "import time; time.sleep(30)"]
    proc = process.Process(sleeper, timeout=0.3, stdin=False, stdout=True)
    try:
        time.sleep(0.5)  # not waiting on it: a slow consumer is not ffmpeg's fault
        assert proc.proc.poll() is None and not proc.timed_out
        t = time.monotonic()
        with proc.busy():
            assert proc.proc.stdout.read() == b""  # blocked until the watchdog killed it
        assert proc.timed_out and time.monotonic() - t < 5
    finally:
        proc.close()
