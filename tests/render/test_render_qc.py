"""The render's quality checks: each flag fires on what it names and stays quiet otherwise; the AVE sync is
measured where the model has an AVE; a long track does not make the render hold more."""

from __future__ import annotations

import shutil
import subprocess
import tracemalloc
from dataclasses import dataclass

import numpy as np
import pytest

from gpu_worker.media.binaries import ffmpeg_exe
from gpu_worker.render.options import RenderOptions
from gpu_worker.render.qc import THRESHOLDS, QualityChecks, lagged_corr
from gpu_worker.render.stage import Renderer


@dataclass
class Track:
    """What the QC reads of a speech track (the fields of render.speech.SpeechTrack)."""

    speech_level_db: float = -18.0
    duration_s: float = 4.0
    peak: float = 0.6
    clipped_fraction: float = 0.0


def _report(openings, envelope, track=Track(), measured=True):
    qc = QualityChecks(fps=25.0, settings=None)
    qc._tracker = object() if measured else None  # what __enter__ sets: a landmarker was available
    qc.openings = list(openings)
    return qc.report(track, np.asarray(envelope), None)


def test_flags_fire_on_what_they_name():
    rng = np.random.default_rng(0)
    env = np.abs(np.sin(np.arange(100) / 4)) + 0.05
    follows = 0.1 * env + 0.002 * rng.standard_normal(100)
    ignores = rng.standard_normal(100)

    good = _report(follows, env)
    assert good["flags"] == [] and good["mouth_envelope_corr"] > 0.9 and good["face_share"] == 1.0
    assert "low_sync" in _report(ignores, env)["flags"]
    # a mouth that lags the sound by 3 frames (0.12 s) is still in sync: the lag window finds it
    lagged = _report(np.roll(follows, 3), env)
    assert "low_sync" not in lagged["flags"] and lagged["mouth_envelope_lag_s"] == pytest.approx(-0.12)

    holes = follows.copy()
    holes[::10] = np.nan  # 10 % of the frames without a face
    missing = _report(holes, env)
    assert "no_face_frames" in missing["flags"] and missing["frames_without_face"] == 10
    assert missing["first_frames_without_face"][:3] == [0, 10, 20]
    assert "no_face_frames" not in _report(np.where(np.arange(100) == 50, np.nan, follows), env)["flags"]

    silent = _report(ignores, np.zeros(100), Track(speech_level_db=-80))
    assert silent["flags"] == ["silent_audio"] and silent["mouth_envelope_corr"] is None
    clipped = _report(follows, env, Track(clipped_fraction=2 * THRESHOLDS["clipped_share"]))
    assert clipped["flags"] == ["clipped_audio"]

    blind = _report([np.nan] * 100, env, measured=False)  # no landmarker model: nothing faked
    assert blind["face_share"] is None and blind["flags"] == []


def test_lagged_corr_finds_the_shift():
    x = np.sin(np.arange(200) / 5.0)
    r0, best, lag = lagged_corr(x, np.roll(x, 2), 4)
    assert best == pytest.approx(1.0, abs=0.02) and lag == 2 and r0 < best


def test_sync_is_measured_where_the_model_has_an_ave(
    tiny_model, base_dataset, subject, speech_mp3, settings, tmp_path
):
    from gpu_worker.ave.towers import AVEConfig
    from gpu_worker.ave.train import AVETrainConfig, train_ave

    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    train_ave(
        [base_dataset], model / "ave.pt", AVETrainConfig(steps=3, batch_size=8, towers=AVEConfig(width=4))
    )
    result = Renderer(model, settings, dataset=subject.dataset).render(
        speech_mp3, tmp_path / "o.mp4", RenderOptions(mode="crop")
    )
    sync = result.qc["sync"]
    assert sync is not None and sync["frames"] == 75  # 3 s at 25 fps
    assert np.isfinite(sync["confidence"]) and -7 <= sync["best_offset"] <= 7


def _speech(path, seconds: float):
    subprocess.run(
        [ffmpeg_exe(), "-v", "error", "-y", "-f", "lavfi", "-i", f"anoisesrc=a=0.2:d={seconds}", "-ar", "16000", str(path)],
        check=True,
    )  # fmt: skip
    return path


@pytest.mark.parametrize("subject", ["112x80@30"], indirect=True)  # one source is enough
def test_a_longer_track_does_not_make_the_render_hold_more(
    tiny_model, subject, settings, tmp_path, monkeypatch
):
    """Frames, features and the walk are per batch: peak traced memory (NumPy's allocations) of an 8 s
    render stays within a little of a 2 s one (a list of all frames would be 4x). The audio side works
    in chunks of 20 s by default (the captions' Whisper in chunks of 5 minutes); they are made small here
    so both tracks span several."""
    import gpu_worker.render.speech as speech
    import gpu_worker.render.stage as stage

    monkeypatch.setattr(speech, "CHUNK_FRAMES", 16)
    monkeypatch.setattr(speech, "LEVEL_CHUNK", 64)
    monkeypatch.setattr(stage, "ENVELOPE_FRAMES", 32)
    import gpu_worker.speech.captions as captions  # Whisper reads the track in chunks too

    monkeypatch.setattr(captions, "CHUNK_S", 2.0)
    monkeypatch.setattr(captions, "CUT_SEARCH_S", 0.5)
    renderer = Renderer(tiny_model, settings, dataset=subject.dataset)
    renderer.render(_speech(tmp_path / "warm.wav", 1.0), tmp_path / "warm.mp4")  # imports, caches
    peaks = []
    for seconds in (2.0, 8.0):
        speech = _speech(tmp_path / f"s{seconds:g}.wav", seconds)
        tracemalloc.start()
        renderer.render(speech, tmp_path / f"o{seconds:g}.mp4", RenderOptions(mode="fullframe"))
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert peaks[1] < 1.3 * peaks[0] + 2**20, peaks
