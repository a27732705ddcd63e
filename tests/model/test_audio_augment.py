"""Speaker augmentation of mel windows: a formant warp that moves spectra the right way, a bounded level
offset, nothing done to non-mel features, and the training steps that use it."""

from __future__ import annotations

import numpy as np
import torch

from gpu_worker.model.audio_augment import MelAugment
from gpu_worker.model.config import profile_config
from gpu_worker.model.trainer import train_model
from gpu_worker.preprocess import audio


def _tone_windows(freq: float, n_windows: int = 6, window: int = 3) -> torch.Tensor:
    """[F, W, 80, 16] mel windows of a steady tone."""
    t = np.arange(audio.SAMPLE_RATE) / audio.SAMPLE_RATE
    mel = audio.log_mel((0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32))
    w = torch.from_numpy(audio.mel_windows(mel, 10)[2 : 2 + window])  # [W, 80, 16]
    return w[None].repeat(n_windows, 1, 1, 1).contiguous()


def _draws(seed: int, n: int) -> torch.Tensor:
    return torch.rand(n, 2, generator=torch.Generator().manual_seed(seed)) * 2 - 1  # as MelAugment draws


def _peak_hz(feats: torch.Tensor) -> np.ndarray:
    aug = MelAugment(0.1, 0.0)
    return aug.centres_hz[feats.mean(dim=(1, 3)).argmax(-1)].numpy()  # [F]


def test_off_is_the_identity_and_other_features_pass_through():
    x = _tone_windows(1000.0)
    assert MelAugment(0.0, 0.0)(x, torch.Generator()) is x
    codes = torch.randn(4, 3, 512)  # AVE codes are not spectra
    assert MelAugment(0.15, 6.0)(codes, torch.Generator()) is codes


def test_the_warp_moves_formants_by_the_drawn_factor():
    x = _tone_windows(1200.0, n_windows=16)
    out = MelAugment(0.15, 0.0)(x, torch.Generator().manual_seed(3))
    alpha = torch.exp(_draws(3, 16)[:, 0] * 0.15).numpy()  # [F]
    moved = _peak_hz(out) / _peak_hz(x)
    # the peak lands on the mel bin nearest 1200 Hz x alpha (bins are ~6 % apart there)
    assert np.all(np.abs(np.log(moved / alpha)) < 0.07)
    assert np.corrcoef(moved, alpha)[0, 1] > 0.9
    assert out.shape == x.shape and out.min() >= -4 and out.max() <= 4


def test_the_level_offset_is_one_bounded_constant_per_window():
    x = _tone_windows(500.0, n_windows=8) * 0.5  # inside [-2, 2]: no clamping
    out = MelAugment(0.0, 6.0)(x, torch.Generator().manual_seed(1))
    diff = (out - x).reshape(8, -1)  # [F, W*80*16]
    assert torch.allclose(diff, diff[:, :1].expand_as(diff), atol=1e-6)
    expected = _draws(1, 8)[:, 1] * 6.0 * (8.0 / 100.0)  # dB -> normalized log-mel units
    assert torch.allclose(diff[:, 0], expected, atol=1e-6)
    loud = MelAugment(0.0, 40.0)(torch.full((4, 2, 80, 16), 3.9), torch.Generator().manual_seed(0))
    assert loud.min() >= -4 and loud.max() <= 4


def test_training_feeds_augmented_windows_to_the_audio_losses(synthetic_dataset, tmp_path, monkeypatch):
    draws: list[int] = []
    seen: list[tuple[tuple[int, ...], int]] = []
    draw, apply = MelAugment.draw, MelAugment.apply

    def spy_draw(self, f, generator):
        draws.append(f)
        return draw(self, f, generator)

    def spy_apply(self, feats, u):
        seen.append((tuple(feats.shape), u.shape[0]))
        return apply(self, feats, u)

    monkeypatch.setattr(MelAugment, "draw", spy_draw)
    monkeypatch.setattr(MelAugment, "apply", spy_apply)
    cfg = profile_config("tiny", "head")
    cfg.trainer.head_steps = 3
    cfg.data.audio_warp, cfg.data.audio_gain_db = 0.15, 6.0
    train_model(synthetic_dataset, tmp_path / "m", cfg)
    # each step draws for the head's frames, then for the lip-shape regression's frames, and augments
    # both sets of windows in one call
    f, b = cfg.data.frames_per_batch, cfg.loss.lip_sync_frames
    assert draws == [f, b] * cfg.trainer.head_steps
    assert seen == [((f + b, cfg.audio.window, 80, 16), f + b)] * cfg.trainer.head_steps
