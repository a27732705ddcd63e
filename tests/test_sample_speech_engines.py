"""Speech engine choice: espeak-ng from PATH when piper is missing, a typed error when neither is there,
and a chosen voice (``--voice``) reaching the engine exactly, or refused before anything runs."""

from __future__ import annotations

import os
import shutil
import stat
import sys
from pathlib import Path

import numpy as np
import pytest

from gpu_worker.sample import speech
from gpu_worker.sample.errors import SampleOptionError, SpeechEngineError

# A stand-in espeak-ng: writes a 16 kHz tone of 0.4 s per call to the -w path, like the real one would,
# and appends the voice it was asked for (-v) to voices.log beside itself.
FAKE_ESPEAK = f"""#!{sys.executable}
import os, sys, wave, numpy as np
with open(os.path.join(os.path.dirname(sys.argv[0]), "voices.log"), "a") as log:
    log.write(sys.argv[sys.argv.index("-v") + 1] + "\\n")
out = sys.argv[sys.argv.index("-w") + 1]
t = np.arange(6400) / 16000
pcm = (0.5 * np.sin(2 * np.pi * 220 * t) * 32767).astype("<i2")
with wave.open(out, "wb") as w:
    w.setnchannels(1); w.setsampwidth(2); w.setframerate(16000); w.writeframes(pcm.tobytes())
"""


def _no_piper(*_args, **_kwargs):
    raise ImportError("piper is not installed")


def _fake_espeak(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, script: str = FAKE_ESPEAK) -> Path:
    exe = tmp_path / "espeak-ng"
    exe.write_text(script)
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ.get('PATH', '')}")
    return tmp_path / "voices.log"


def test_espeak_ng_is_used_when_piper_is_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_espeak(tmp_path, monkeypatch)
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


def test_a_chosen_espeak_voice_reaches_the_engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = _fake_espeak(tmp_path, monkeypatch)

    def piper_must_not_run(*_args, **_kwargs):
        raise AssertionError("an espeak-ng voice was asked for")

    monkeypatch.setattr(speech, "_piper_sentences", piper_must_not_run)
    track = speech.speech_track("One. Two.", n_frames=25, fps=25, seed=0, voice="espeak-ng:en-gb+f3")
    assert track.engine == "espeak-ng:en-gb+f3"
    assert set(log.read_text().split()) == {"en-gb+f3"}


@pytest.mark.parametrize(
    "voice", ["festival", "piper:joe", "espeak-ng:", "espeak-ng:--help", "espeak-ng:en us", "espeak-ng:en;ls"]
)
def test_unknown_voices_are_refused_before_anything_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, voice: str
) -> None:
    log = _fake_espeak(tmp_path, monkeypatch)
    with pytest.raises(SampleOptionError) as err:
        speech.speech_track("Hello.", n_frames=25, fps=25, seed=0, voice=voice)
    assert err.value.code == "sample_option"
    assert not log.exists()


def test_piper_asked_for_but_missing_is_a_typed_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = _fake_espeak(tmp_path, monkeypatch)
    monkeypatch.setattr(speech, "_piper_sentences", _no_piper)
    with pytest.raises(SpeechEngineError, match="piper"):
        speech.speech_track("Hello.", n_frames=25, fps=25, seed=0, voice="piper")
    assert not log.exists()  # no silent fall-back to another speaker


def test_an_espeak_failure_names_the_voice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    failing = (
        f"#!{sys.executable}\nimport sys\nsys.stderr.write('Error: voice does not exist\\n')\nsys.exit(1)\n"
    )
    _fake_espeak(tmp_path, monkeypatch, failing)
    with pytest.raises(SpeechEngineError, match=r"en-zz.*voice does not exist"):
        speech.speech_track("Hello.", n_frames=25, fps=25, seed=0, voice="espeak-ng:en-zz")


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_real_espeak_voices_differ() -> None:
    male = speech.speech_track("Hello there.", n_frames=40, fps=25, seed=0, voice="espeak-ng:en-us")
    female = speech.speech_track("Hello there.", n_frames=40, fps=25, seed=0, voice="espeak-ng:en-us+f3")
    assert male.samples.shape == female.samples.shape and np.abs(male.samples).max() > 0.3
    assert not np.allclose(male.samples, female.samples, atol=1e-3)
