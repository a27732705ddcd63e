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
