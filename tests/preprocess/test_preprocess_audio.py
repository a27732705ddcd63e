"""Log-mel, per-frame windows and the encoder choices (METHOD.md 1.8)."""

from __future__ import annotations

import numpy as np
import pytest

from gpu_worker.preprocess import audio
from gpu_worker.preprocess.errors import AudioEncoderError


def _tone(freq: float, seconds: float = 1.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * audio.SAMPLE_RATE)) / audio.SAMPLE_RATE
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_mel_basis_covers_55_to_7600_hz():
    basis = audio.mel_basis()  # [80, 401]
    assert basis.shape == (80, 401)
    freqs = np.linspace(0, 8000, 401)
    support = freqs[basis.sum(0) > 0]
    assert 40 < support.min() < 80 and 7400 < support.max() < 7700
    centres = freqs[basis.argmax(1)]
    assert np.all(np.diff(centres) >= 0)  # filters ordered by frequency


def test_log_mel_rate_range_and_pitch():
    mel = audio.log_mel(_tone(1000.0, seconds=2.0))
    assert mel.shape == (1 + 2 * audio.SAMPLE_RATE // audio.HOP, 80)  # 80 frames per second
    assert mel.min() >= -4 and mel.max() <= 4
    low, high = audio.log_mel(_tone(300.0)).mean(0).argmax(), mel.mean(0).argmax()
    assert low < high  # a higher tone lights a higher mel band
    silent = audio.log_mel(np.zeros(16000, np.float32))
    assert np.allclose(silent, -4)


def test_mel_windows_index_and_edge_padding():
    mel = np.arange(100 * 80, dtype=np.float32).reshape(100, 80)  # [T, 80]
    win = audio.mel_windows(mel, n_frames=40)
    assert win.shape == (40, 80, 16)
    # frame i starts at mel frame floor(80 i / 25)
    assert np.array_equal(win[5, :, 0], mel[16])
    assert np.array_equal(win[5, :, 15], mel[31])
    # past the end: the last mel frame repeats
    assert np.array_equal(win[39, :, -1], mel[-1])


def test_encoders(settings):
    samples = _tone(440.0, seconds=2.0)
    feats, warnings = audio.compute_audio_features(None, "mel", settings, samples=samples)
    assert feats.shape == (50, 80, 16) and warnings == []
    feats, warnings = audio.compute_audio_features(None, "mel", settings, samples=samples, n_frames=47)
    assert feats.shape == (47, 80, 16)
    feats, warnings = audio.compute_audio_features(None, "ave", settings, samples=samples)
    assert feats.shape == (50, 80, 16) and "mel" in warnings[0]
    with pytest.raises(AudioEncoderError, match="hubert"):
        audio.compute_audio_features(None, "hubert", settings, samples=samples)
    with pytest.raises(AudioEncoderError, match="unknown"):
        audio.compute_audio_features(None, "wav2vec", settings, samples=samples)
    with pytest.raises(AudioEncoderError, match="not found"):
        audio.compute_audio_features(
            None, "ave", settings, samples=samples, ave_checkpoint=settings.model_dir / "x.pt"
        )


def _speechy(seconds: float = 3.0, amp: float = 0.3) -> np.ndarray:
    """Bursts of a harmonic tone (syllables) between pauses: what a speech level has to be read from."""
    t = np.arange(int(seconds * audio.SAMPLE_RATE)) / audio.SAMPLE_RATE
    voiced = sum(np.sin(2 * np.pi * 140 * k * t) / k for k in range(1, 8))
    syllables = (np.sin(2 * np.pi * 3.0 * t) > 0.2) * (t % 1.0 < 0.7)  # 3 per second, a pause each second
    return (amp * voiced * syllables).astype(np.float32)


def test_level_normalization_makes_quiet_and_loud_speech_the_same_features(settings):
    loud = _speechy(amp=0.3)
    quiet = loud * np.float32(10 ** (-30 / 20))  # the same speech 30 dB quieter
    assert audio.speech_level_db(loud) - audio.speech_level_db(quiet) == pytest.approx(30.0, abs=0.01)
    a, _ = audio.compute_audio_features(None, "mel", settings, samples=loud)
    b, warnings = audio.compute_audio_features(None, "mel", settings, samples=quiet)
    assert np.abs(a - b).max() < 1e-3
    assert warnings and "quiet" in warnings[0]  # raised by more than 20 dB: said so
    # without it (models trained before it), the quiet copy's features sit far lower
    a0, _ = audio.compute_audio_features(None, "mel", settings, samples=loud, level=None)
    b0, _ = audio.compute_audio_features(None, "mel", settings, samples=quiet, level=None)
    assert (a0 - b0).max() > 2.0 and (a0 - b0).min() >= 0


def test_level_normalization_targets_the_loud_frames_not_the_pauses():
    speech = _speechy(amp=0.3)
    padded = np.concatenate([speech, np.zeros(2 * speech.size, np.float32)])  # two thirds silence
    scaled, gain = audio.normalize_level(padded)
    assert audio.speech_level_db(scaled) == pytest.approx(audio.LEVEL_TARGET_DB, abs=0.01)
    assert gain == pytest.approx(audio.normalize_level(speech)[1], abs=1.5)  # the pauses barely count


def test_level_normalization_leaves_silence_alone_and_caps_the_gain():
    silent = np.zeros(16000, np.float32)
    out, gain = audio.normalize_level(silent)
    assert gain == 0.0 and np.array_equal(out, silent)
    hiss = _speechy(amp=3e-3)  # about -60 dBFS: raised, but by at most LEVEL_MAX_GAIN_DB
    _, gain = audio.normalize_level(hiss)
    assert 0 < gain <= audio.LEVEL_MAX_GAIN_DB
    with pytest.raises(AudioEncoderError, match="level"):
        audio.normalize_level(hiss, level="ebu-r128")
