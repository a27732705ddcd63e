"""AVE: SyncNet-style training separates in-sync from shifted pairs; the audio tower loads for preprocessing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gpu_worker.ave import load_audio_encoder, load_towers
from gpu_worker.ave.sync import offset_curve
from gpu_worker.ave.towers import AVEConfig
from gpu_worker.ave.train import AVETrainConfig, AVETrainingError, train_ave
from gpu_worker.model.checkpoint import CheckpointError, save_atomic


@pytest.fixture(scope="module")
def long_dataset(tmp_path_factory):
    from synthetic import make_synthetic_dataset

    return make_synthetic_dataset(tmp_path_factory.mktemp("ave") / "long", n_frames=160, res=48, seed=3)


@pytest.mark.slow
def test_ave_separates_in_sync_from_shifted(long_dataset, tmp_path):
    # 300 steps: at 120 the held-out accuracy depended on the machine's float rounding (0.65 on one
    # 2-core host, 0.75+ on another); at 300 it is 0.75-0.9 over seeds. 20 pairs: 0.7 is well above
    # the 0.5 of chance.
    cfg = AVETrainConfig(steps=300, batch_size=32, max_offset=5, towers=AVEConfig(width=8))
    result = train_ave([long_dataset], tmp_path / "ave.pt", cfg, device="cpu")
    assert result.loss_last < result.loss_first
    assert result.heldout_pairs >= 20
    assert result.heldout_accuracy >= 0.7
    assert result.found_offset == result.applied_offset
    audio, lip = load_towers(result.path)
    # on held-in data too: the in-sync score beats the shifted ones
    from gpu_worker.ave.data import load_clip

    clip = load_clip(long_dataset)
    ids = np.arange(40, 100)
    curve = offset_curve(
        audio, lip, np.stack([clip.mel_window(i) for i in ids]), np.stack([clip.lips(i) for i in ids]), 5
    )
    assert curve.best_offset == 0 and curve.confidence > 0.05


def test_audio_encoder_loads_and_maps_mel_windows(tmp_path, long_dataset):
    result = train_ave(
        [long_dataset], tmp_path / "ave.pt", AVETrainConfig(steps=2, batch_size=4, towers=AVEConfig(width=4))
    )
    enc = load_audio_encoder(result.path)
    with torch.no_grad():
        out = enc(torch.zeros(3, 1, 80, 16))
    assert out.shape == (3, 512) and not enc.training


def test_ave_errors(tmp_path):
    with pytest.raises(AVETrainingError):
        train_ave([], tmp_path / "x.pt")
    save_atomic({"kind": "something-else"}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not an AVE"):
        load_audio_encoder(tmp_path / "other.pt")
