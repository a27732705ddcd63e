"""Training on a tiny synthetic dataset: every stage runs, the loss falls, checkpoints resume exactly."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from gpu_worker.model.checkpoint import CheckpointError
from gpu_worker.model.config import ConfigError, config_from_dict, parse_stages, profile_config
from gpu_worker.model.dataparser import parse_dataset
from gpu_worker.model.trainer import CHECKPOINT, FINAL, Trainer, TrainingError, train_model
from shared.errors import DatasetError


def _tiny(stages="head,lips,torso", **trainer):
    cfg = profile_config("tiny", stages)
    for k, v in trainer.items():
        setattr(cfg.trainer, k, v)
    return cfg


def test_every_stage_trains_and_head_loss_falls(synthetic_dataset, tmp_path):
    cfg = _tiny()
    result = train_model(synthetic_dataset, tmp_path / "m", cfg)
    assert result.stages_done == ["head", "lips", "torso"]
    assert result.global_step == cfg.trainer.head_steps + cfg.trainer.lips_steps + cfg.trainer.torso_steps
    head = [h["l1"] for h in result.history if h["stage"] == "head"]
    assert np.mean(head[-8:]) < 0.85 * np.mean(head[:8])
    torso = [h["l1"] for h in result.history if h["stage"] == "torso"]
    assert np.mean(torso[-5:]) < 0.95 * np.mean(torso[:5])
    saved = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config_from_dict(saved["config"]) == cfg  # the run can be rebuilt from its config.json
    assert (tmp_path / "m" / FINAL).is_file() and (tmp_path / "m" / CHECKPOINT).is_file()


def test_resume_takes_the_same_next_step(synthetic_dataset, tmp_path):
    cfg = _tiny("head,lips", head_steps=12, lips_steps=4, checkpoint_every=5)
    cfg.data.audio_warp, cfg.data.audio_gain_db = 0.15, 6.0  # its random draws resume too
    full = train_model(synthetic_dataset, tmp_path / "full", cfg)
    # interrupted at step 7 (not a checkpoint multiple: stopping writes one), then in the lips stage
    for stop in (7, 14):
        out = tmp_path / f"part{stop}"
        part = train_model(synthetic_dataset, out, cfg, stop_after=stop)
        assert part.global_step == stop
        resumed = train_model(synthetic_dataset, out, cfg, resume=True)
        assert resumed.global_step == full.global_step
        nxt = resumed.history[stop]
        assert nxt["step"] == stop + 1
        assert nxt["loss"] == pytest.approx(full.history[stop]["loss"], rel=1e-5, abs=1e-7)
        assert resumed.history[-1]["loss"] == pytest.approx(full.history[-1]["loss"], rel=1e-4, abs=1e-6)


def test_existing_run_needs_resume(synthetic_dataset, tmp_path):
    cfg = _tiny("head", head_steps=2)
    train_model(synthetic_dataset, tmp_path / "m", cfg)
    with pytest.raises(TrainingError, match="--resume"):
        train_model(synthetic_dataset, tmp_path / "m", cfg)


def test_corrupt_checkpoint_is_a_clear_error(synthetic_dataset, tmp_path):
    cfg = _tiny("head", head_steps=3)
    train_model(synthetic_dataset, tmp_path / "m", cfg, stop_after=2)
    ckpt = tmp_path / "m" / CHECKPOINT
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt"):
        train_model(synthetic_dataset, tmp_path / "m", cfg, resume=True)
    ckpt.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError):
        train_model(synthetic_dataset, tmp_path / "m", cfg, resume=True)


def test_mismatched_checkpoint_is_refused(synthetic_dataset, synthetic_dataset_b, tmp_path):
    cfg = _tiny("head", head_steps=3)
    train_model(synthetic_dataset, tmp_path / "m", cfg, stop_after=2)
    other = _tiny("head", head_steps=3)
    other.field.num_levels += 1
    with pytest.raises(CheckpointError, match="num_levels"):
        train_model(synthetic_dataset, tmp_path / "m", other, resume=True)
    # same architecture, another dataset with other cameras: refused too
    shutil.copytree(synthetic_dataset_b, tmp_path / "b")
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    manifest["aabb"] = [-1.2, -1, -1, 1, 1, 1]
    (tmp_path / "b" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="dataset"):
        train_model(tmp_path / "b", tmp_path / "m", cfg, resume=True)


def test_grid_layout_is_part_of_the_architecture(synthetic_dataset, tmp_path):
    assert profile_config("standard").field.grid_layout == "tcnn"  # tinycudann where the GPU has it
    # tiny-cuda-nn's layout trains on a CPU host too (cuda_ext computes the same grid)
    cfg = _tiny("head", head_steps=3)
    cfg.field.grid_layout = cfg.torso.grid_layout = "tcnn"
    result = train_model(synthetic_dataset, tmp_path / "t", cfg, stop_after=2)
    assert all(np.isfinite(h["loss"]) for h in result.history)
    assert json.loads((tmp_path / "t" / "config.json").read_text())["hash_grids"] == {
        "head": "cuda_ext",
        "torso": "cuda_ext",
    }
    with pytest.raises(CheckpointError, match="grid_layout"):
        train_model(synthetic_dataset, tmp_path / "t", _tiny("head", head_steps=3), resume=True)
    # a checkpoint written before the layout was recorded is an ngp one, and resumes as one
    ngp = _tiny("head", head_steps=3)
    train_model(synthetic_dataset, tmp_path / "n", ngp, stop_after=2)
    payload = torch.load(tmp_path / "n" / CHECKPOINT, weights_only=False)
    for section in ("field", "torso"):
        del payload["architecture"][section]["grid_layout"]
    torch.save(payload, tmp_path / "n" / CHECKPOINT)
    assert train_model(synthetic_dataset, tmp_path / "n", ngp, resume=True).global_step == 3
    with pytest.raises(CheckpointError, match="grid_layout"):
        train_model(synthetic_dataset, tmp_path / "n", cfg, resume=True)


def test_later_stages_need_a_head(synthetic_dataset, tmp_path):
    with pytest.raises(TrainingError, match="trained head"):
        train_model(synthetic_dataset, tmp_path / "m", _tiny("torso"))
    # a finished head run can be extended with the torso by resuming
    train_model(synthetic_dataset, tmp_path / "h", _tiny("head", head_steps=3))
    more = train_model(synthetic_dataset, tmp_path / "h", _tiny("torso", torso_steps=2), resume=True)
    assert more.stages_done == ["head", "torso"] and more.global_step == 5


def test_hubert_shaped_features_train(synthetic_dataset, tmp_path):
    ds = tmp_path / "hubert"
    shutil.copytree(synthetic_dataset, ds)
    n = np.load(ds / "audio_features.npy").shape[0]
    np.save(
        ds / "audio_features.npy", np.random.default_rng(0).standard_normal((n, 2, 1024)).astype(np.float32)
    )
    trainer = Trainer(ds, tmp_path / "m", _tiny("head", head_steps=2))
    assert trainer.spec.feature_shape == (2, 1024)
    trainer.run()
    assert trainer.global_step == 2


def test_dataset_errors_are_typed(synthetic_dataset, tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        parse_dataset(tmp_path / "nope")
    ds = tmp_path / "broken"
    shutil.copytree(synthetic_dataset, ds)
    (ds / "landmarks.npy").unlink()
    with pytest.raises(DatasetError, match="landmarks.npy"):
        parse_dataset(ds)


def test_dataparser_rescales_to_working_resolution(synthetic_dataset):
    full = parse_dataset(synthetic_dataset)
    half = parse_dataset(synthetic_dataset, resolution=24)
    assert half.resolution == 24
    np.testing.assert_allclose(half.intrinsics, full.intrinsics / 2)
    np.testing.assert_allclose(half.landmarks, full.landmarks / 2, rtol=1e-6)
    assert (half.lips_box[:, 2] > half.lips_box[:, 0]).all() and (half.lips_box <= 24).all()


def test_profiles_and_stages():
    assert parse_stages("torso,head") == ("head", "torso")
    with pytest.raises(ConfigError):
        parse_stages("head,mouth")
    with pytest.raises(ConfigError):
        profile_config("huge")
    pv = profile_config("preview")
    assert pv.data.resolution == 128 and pv.trainer.head_steps <= 6000  # CPU minutes, not hours
    assert torch.__version__  # torch importable for the profiles' users
