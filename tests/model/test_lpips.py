"""LPIPS for the lips stage where its weights are in the model directory, the structural loss where not.

The real weights (torchvision's AlexNet, LPIPS v0.1 linear layers) cannot be fetched here, so the files
these tests write have the real files' layout with seeded random values.
"""

from __future__ import annotations

import json

import pytest
import torch

from gpu_worker.model.config import ConfigError, profile_config
from gpu_worker.model.lpips import (
    BACKBONE_FILE,
    LINEAR_FILE,
    LPIPS,
    LPIPSWeightsError,
    load_lpips,
    lpips_dir,
)
from gpu_worker.model.trainer import Trainer, TrainingError, train_model


def _write_weights(weights_dir, seed: int = 0):
    """An LPIPS folder as a user would fill it: torchvision's AlexNet state dict (with its classifier,
    which LPIPS ignores) and the lpips package's linear weights, under their own key names."""
    torch.manual_seed(seed)
    net = LPIPS()
    for lin in net.lins:  # LPIPS's linear weights are non-negative
        lin.weight.data.abs_()
    folder = lpips_dir(weights_dir)
    folder.mkdir(parents=True)
    backbone = {f"features.{k}": v for k, v in net.features.state_dict().items()}
    backbone["classifier.1.weight"] = torch.zeros(4096, 9216)
    torch.save(backbone, folder / BACKBONE_FILE)
    torch.save({f"lin{i}.model.1.weight": lin.weight for i, lin in enumerate(net.lins)}, folder / LINEAR_FILE)
    return net


def test_lpips_distance_behaves_like_a_distance():
    torch.manual_seed(0)
    net = LPIPS()
    for lin in net.lins:
        lin.weight.data.abs_()
    a, b = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    d = net(a, b)
    assert d.shape == (2,) and (d > 0).all()
    assert torch.allclose(net(a, a), torch.zeros(2), atol=1e-6)
    torch.testing.assert_close(net(b, a), d)
    # a slightly blurred image is closer than an unrelated one
    blurred = torch.nn.functional.avg_pool2d(a, 3, stride=1, padding=1)
    assert (net(a, blurred) < d).all()
    # small patches (the preview profile's 24 px) are upsampled to AlexNet's minimum and still compare
    small = net(a[:, :, :24, :24], b[:, :, :24, :24])
    assert torch.isfinite(small).all() and (small > 0).all()
    # only the rendered image gets a gradient; the network is frozen
    x = a.clone().requires_grad_(True)
    net(x, b).sum().backward()
    assert x.grad.abs().sum() > 0
    assert all(p.grad is None for p in net.parameters())


def test_load_lpips_reads_the_real_files_layout(tmp_path):
    assert load_lpips(tmp_path) is None  # no folder: the structural loss is used
    saved = _write_weights(tmp_path)
    net = load_lpips(tmp_path)
    torch.testing.assert_close(net.features[3].weight, saved.features[3].weight)
    torch.testing.assert_close(net.lins[4].weight, saved.lins[4].weight)
    a, b = torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64)
    torch.testing.assert_close(net(a, b), saved(a, b))


def test_a_broken_lpips_folder_is_a_clear_error(tmp_path):
    folder = lpips_dir(tmp_path)
    folder.mkdir()
    with pytest.raises(LPIPSWeightsError, match=f"{BACKBONE_FILE} and {LINEAR_FILE}"):
        load_lpips(tmp_path)
    _write_weights(tmp_path / "good")
    for name in (BACKBONE_FILE, LINEAR_FILE):
        (folder / name).write_bytes((lpips_dir(tmp_path / "good") / name).read_bytes())
    (folder / LINEAR_FILE).write_bytes(b"truncated")
    with pytest.raises(LPIPSWeightsError, match="cannot read"):
        load_lpips(tmp_path)
    torch.save({"lin0.model.1.weight": torch.ones(1, 3, 1, 1)}, folder / LINEAR_FILE)  # VGG's, say
    with pytest.raises(LPIPSWeightsError, match="do not fit"):
        load_lpips(tmp_path)


def _lips_run_config():
    cfg = profile_config("tiny", "head,lips")
    cfg.trainer.head_steps, cfg.trainer.lips_steps = 4, 3
    return cfg


def test_lips_stage_uses_lpips_where_its_weights_are(synthetic_dataset, tmp_path):
    cfg = _lips_run_config()
    plain = train_model(synthetic_dataset, tmp_path / "plain", cfg, weights_dir=tmp_path / "empty")
    _write_weights(tmp_path / "weights")
    with_lpips = train_model(synthetic_dataset, tmp_path / "lpips", cfg, weights_dir=tmp_path / "weights")
    assert json.loads((tmp_path / "plain" / "config.json").read_text())["patch_loss"] == "structural"
    assert json.loads((tmp_path / "lpips" / "config.json").read_text())["patch_loss"] == "lpips"
    head = cfg.trainer.head_steps
    # same seed: the head stage is the same run; the lips stage's loss is another loss
    assert [h["loss"] for h in with_lpips.history[:head]] == [h["loss"] for h in plain.history[:head]]
    assert with_lpips.history[head]["loss"] != pytest.approx(plain.history[head]["loss"], rel=1e-6)
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in with_lpips.history)


def test_patch_loss_choice_is_checked(synthetic_dataset, tmp_path):
    cfg = _lips_run_config()
    cfg.loss.patch_loss = "lpips"
    with pytest.raises(TrainingError, match="lpips"):
        Trainer(synthetic_dataset, tmp_path / "m", cfg, weights_dir=tmp_path)
    cfg.loss.patch_loss = "perceptual"
    with pytest.raises(ConfigError, match="patch_loss"):
        Trainer(synthetic_dataset, tmp_path / "m", cfg, weights_dir=tmp_path)
    # "structural" never looks for the weights, even where a broken folder is in the way
    lpips_dir(tmp_path).mkdir()
    cfg.loss.patch_loss = "structural"
    assert Trainer(synthetic_dataset, tmp_path / "m", cfg, weights_dir=tmp_path).patch_loss == "structural"
