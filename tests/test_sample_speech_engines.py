"""Speech engine choice: espeak-ng from PATH when piper is missing, a typed error when neither is there."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import numpy as np
import pytest

from gpu_worker.sample import speech
from gpu_worker.sample.errors import SpeechEngineError

# A stand-in espeak-ng: writes a 16 kHz tone of 0.4 s per call to the -w path, like the real one would.
FAKE_ESPEAK = f"""#!{sys.executable}
import sys, wave, numpy as np
out = sys.argv[sys.argv.index("-w") + 1]
t = np.arange(6400) / 16000
pcm = (0.5 * np.sin(2 * np.pi * 220 * t) * 32767).astype("<i2")
with wave.open(out, "wb") as w:
    w.setnchannels(1); w.setsampwidth(2); w.setframerate(16000); w.writeframes(pcm.tobytes())
"""


def _no_piper(*_args, **_kwargs):
    raise ImportError("piper is not installed")


def test_espeak_ng_is_used_when_piper_is_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    exe = tmp_path / "espeak-ng"
    exe.write_text(FAKE_ESPEAK)
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setattr(speech, "_piper_sentences", _no_piper)
    track = speech.speech_track("One sentence. And another one.", n_frames=50, fps=25, seed=0)
    assert track.engine == "espeak-ng"
    assert track.rate == 16000 and track.samples.size == 2 * 16000
    assert np.abs(track.samples).max() > 0.5  # the tone arrived (normalized to the sentence peak)


def test_no_engine_is_a_typed_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on it
    monkeypatch.setattr(speech, "_piper_sentences", _no_piper)
    with pytest.raises(SpeechEngineError) as err:
        speech.speech_track("Hello.", n_frames=25, fps=25, seed=0)
    assert err.value.code == "tts_unavailable"
