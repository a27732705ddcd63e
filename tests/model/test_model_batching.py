"""Multi-frame ray batches, the lip-shape auxiliary loss and the torso's pose standardization: what
makes the lips learn the audio, and the torso its motion, within a CPU preview run (docs/MODEL.md)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gpu_worker.model.audio_net import window_indices
from gpu_worker.model.cameras import pixel_rays
from gpu_worker.model.config import profile_config
from gpu_worker.model.datamanager import DataManager, expression_weights
from gpu_worker.model.dataparser import EYE_LIDS, EYES, lip_shape, mouth_opening, parse_dataset
from gpu_worker.model.metrics import eye_agreement
from gpu_worker.model.renderer import sample_rays
from gpu_worker.model.trainer import Trainer


def test_sample_rays_maps_samples_to_their_rays_in_any_order():
    # three rays with 2, 0 and 3 samples, stored out of ray order (as GPU atomics may lay them out)
    rays = torch.tensor([[3, 2], [5, 0], [0, 3]], dtype=torch.int32)
    assert sample_rays(rays, 5).tolist() == [2, 2, 2, 0, 0]
    with pytest.raises(RuntimeError, match="samples"):
        sample_rays(rays, 6)


def test_multi_frame_batch_takes_rays_from_several_frames(synthetic_dataset):
    cfg = profile_config("tiny").data
    cfg.frames_per_batch, cfg.rays_per_batch, cfg.lips_fraction = 4, 400, 0.25
    info = parse_dataset(synthetic_dataset, 32)
    dm = DataManager(info, cfg)
    batch = dm.sample("head", torch.Generator().manual_seed(0))
    assert len(batch.frames) == 4 and set(batch.frames) <= set(info.train_ids.tolist())
    assert batch.group.shape == (400,) and torch.bincount(batch.group).tolist() == [100] * 4
    for j, frame in enumerate(batch.frames):
        rows = batch.group == j
        px = batch.px[rows].long()
        gt = dm.image("gt", frame)[px[:, 1], px[:, 0]]
        assert torch.equal(batch.rgb[rows], gt)  # each ray's target is its own frame's pixel
        x0, y0, x1, y1 = (int(v) for v in info.lips_box[frame])
        in_lips = (px[:, 0] >= x0) & (px[:, 0] < x1) & (px[:, 1] >= y0) & (px[:, 1] < y1)
        assert int(in_lips.sum()) >= 25  # the lips' share of the rays
    # the other stages still draw one frame
    assert dm.sample("lips", torch.Generator().manual_seed(0)).group is None


def test_rays_of_several_frames_render_as_each_frame_alone(synthetic_dataset):
    cfg = profile_config("tiny")
    trainer = Trainer(synthetic_dataset, "/nonexistent-unused", cfg)
    model, info = trainer.model, trainer.info
    model.eval()
    frames = [int(info.train_ids[1]), int(info.train_ids[9])]
    # different conditions per frame (a trained audio net would make them differ anyway)
    enc_a = torch.randn(2, cfg.field.audio_dim, generator=torch.Generator().manual_seed(0))
    exp = torch.from_numpy(info.expression[frames])
    latent = torch.randn(2, cfg.field.latent_dim, generator=torch.Generator().manual_seed(1))
    px = torch.stack(torch.meshgrid(torch.arange(8, 40, 2.0), torch.arange(8, 40, 2.0), indexing="xy"), -1)
    px = px.reshape(-1, 2)
    rays = [
        pixel_rays(torch.from_numpy(info.poses[f]), torch.from_numpy(info.intrinsics), px) for f in frames
    ]
    with torch.no_grad():
        alone = [
            model.render_head(o, d, enc_a[j], exp[j], latent[j])["image"] for j, (o, d) in enumerate(rays)
        ]
        group = torch.arange(2).repeat_interleave(px.shape[0])
        together = model.render_head(
            torch.cat([r[0] for r in rays]), torch.cat([r[1] for r in rays]), enc_a, exp, latent, group=group
        )["image"]
    assert torch.allclose(together, torch.cat(alone), atol=1e-5)
    assert not torch.allclose(alone[0], alone[1], atol=1e-3)  # the conditions do change the picture


def test_lip_shape_ignores_scale_and_shift_and_follows_the_gap(synthetic_dataset):
    lms = np.load(synthetic_dataset / "landmarks.npy")[:, :, :2]  # [N, 478, 2]
    shape = lip_shape(lms)
    assert shape.shape == (len(lms), 10)
    np.testing.assert_allclose(lip_shape(lms * 2.5 + 7.0), shape, rtol=1e-4)
    # the first measure is the inner-lip gap: the mouth opening itself
    opening = mouth_opening(lms)
    assert np.corrcoef(shape[:, 0], opening)[0, 1] > 0.99


def test_lip_sync_loss_teaches_the_audio_code_the_mouth(synthetic_dataset, tmp_path):
    """A few dozen head steps: the lip head's prediction from audio alone follows the frames' lips."""
    cfg = profile_config("tiny", "head")
    cfg.trainer.head_steps = 40
    cfg.loss.lip_sync = 1.0
    trainer = Trainer(synthetic_dataset, tmp_path / "m", cfg)

    def fit() -> float:
        ids = torch.as_tensor(trainer.info.train_ids)
        with torch.no_grad():
            idx = window_indices(ids, cfg.audio.window, trainer.spec.n_frames)
            pred = trainer.model.lip_head(trainer.model.audio_code(trainer.feats[idx]))[:, 0]
        return float(np.corrcoef(pred.numpy(), trainer.lip_target[ids, 0].numpy())[0, 1])

    before = fit()
    trainer.run()
    assert fit() > max(0.8, before + 0.3)


def test_torso_pose_input_is_standardized_and_saved_with_the_model(synthetic_dataset, tmp_path):
    from gpu_worker.model.render_api import load_model
    from gpu_worker.model.trainer import train_model

    cfg = profile_config("tiny")
    cfg.trainer.head_steps, cfg.trainer.lips_steps, cfg.trainer.torso_steps = 4, 1, 2
    train_model(synthetic_dataset, tmp_path / "m", cfg)
    torso = load_model(tmp_path / "m").model.torso
    info = parse_dataset(synthetic_dataset)
    flat = torch.from_numpy(info.poses[info.train_ids][:, :3, :4]).reshape(-1, 12).float()
    z = (flat - torso.pose_mean) / torso.pose_std
    moving = flat.std(0) > 1e-3  # the entries the orbiting camera changes
    assert moving.any()
    assert torch.allclose(z.mean(0), torch.zeros(12), atol=1e-4)
    assert torch.allclose(z.std(0)[moving], torch.ones(int(moving.sum())), atol=1e-3)


def test_torso_follows_the_audio_code_without_training_the_audio_net(synthetic_dataset):
    cfg = profile_config("tiny")
    model = Trainer(synthetic_dataset, "/nonexistent-unused", cfg).model
    px = torch.stack(torch.meshgrid(torch.arange(0, 32, 4.0), torch.arange(0, 32, 4.0), indexing="xy"), -1)
    px, pose = px.reshape(-1, 2), torch.eye(4)
    quiet, loud = torch.zeros(cfg.field.audio_dim), torch.ones(cfg.field.audio_dim)
    # a fresh torso ignores the audio (it starts as the pose-only torso did)
    assert torch.equal(model.render_torso(px, pose, quiet, 0), model.render_torso(px, pose, loud, 0))
    feats = torch.randn(1, cfg.audio.window, *model.spec.feature_shape)
    enc_a = model.audio_code(feats)[0]
    model.render_torso(px, pose, enc_a, 0).sum().backward()
    assert model.torso.audio_proj.weight.grad.abs().sum() > 0  # the torso learns to use the audio code
    assert all(p.grad is None for p in model.audio_net.parameters())  # the head's audio net stays as it is
    with torch.no_grad():
        model.torso.audio_proj.weight.normal_()
    assert not torch.allclose(model.render_torso(px, pose, quiet, 0), model.render_torso(px, pose, loud, 0))


def test_grid_update_density_is_the_max_over_the_frames_conditions(synthetic_dataset, tmp_path):
    """The occupancy grid's density shares the point features between conditions; same values as
    evaluating the field once per condition."""
    trainer = Trainer(synthetic_dataset, tmp_path / "m", profile_config("tiny", "head"))
    field = trainer.model.field
    torch.manual_seed(0)
    for grid in field.planes:  # a field that varies in space, not the near-zero initial tables
        grid.embeddings.data.normal_(0, 1)
    xyz = torch.rand(500, 3) * 2 - 1
    conds = [trainer._conditions(int(i)) for i in trainer.info.train_ids[:3]]
    each = torch.stack([field.density(xyz, a, e)["sigma"] for a, e in conds])  # [3, M]
    assert (each.amax(0) > each.amin(0)).any()  # the conditions differ somewhere
    torch.testing.assert_close(field.max_density(xyz, conds), each.amax(0))


def test_eye_rays_and_rare_expressions_are_drawn_more(synthetic_dataset):
    """eyes_fraction puts its share of the head rays in the eyes box; expression_sampling draws the
    frames whose expression is far from the usual (a blink) several times more often than uniform."""
    info = parse_dataset(synthetic_dataset, 32)
    eyes = info.eyes_box
    assert ((eyes[:, 2] > eyes[:, 0]) & (eyes[:, 3] > eyes[:, 1])).all()
    lms = info.landmarks[:, EYES, :2]  # the eyes' landmarks lie in their box
    assert (lms[..., 0] >= eyes[:, None, 0] - 1).all() and (lms[..., 0] <= eyes[:, None, 2] + 1).all()
    assert (lms[..., 1] >= eyes[:, None, 1] - 1).all() and (lms[..., 1] <= eyes[:, None, 3] + 1).all()

    cfg = profile_config("tiny").data
    cfg.frames_per_batch, cfg.rays_per_batch, cfg.lips_fraction, cfg.eyes_fraction = 1, 400, 0.0, 0.25
    dm = DataManager(info, cfg)
    batch = dm.sample("head", torch.Generator().manual_seed(0))
    x0, y0, x1, y1 = (int(v) for v in info.eyes_box[batch.index])
    px = batch.px.long()
    in_eyes = (px[:, 0] >= x0) & (px[:, 0] < x1) & (px[:, 1] >= y0) & (px[:, 1] < y1)
    assert int(in_eyes.sum()) >= 100

    # one training frame blinks; the rest keep the dataset's expression
    blink = int(info.train_ids[5])
    info.expression = info.expression.copy()
    info.expression[blink, 5:] = 1.0
    assert expression_weights(info, 0.0) is None
    gen = torch.Generator().manual_seed(1)
    cfg.expression_sampling = 0.3
    dm = DataManager(info, cfg)
    draws = [dm._sample_frame("head", gen, 4).index for _ in range(600)]
    uniform = 600 / len(info.train_ids)
    assert draws.count(blink) > 3 * uniform
    # the lips and torso stages still draw uniformly
    draws = [dm._sample_frame("torso", gen, 4).index for _ in range(600)]
    assert draws.count(blink) < 3 * uniform


def test_eye_agreement_tells_blinking_eyes_from_eyes_that_stay_open(synthetic_dataset):
    open_eyes = np.load(synthetic_dataset / "landmarks.npy")[:12, :, :2].astype(np.float64)
    gt = open_eyes.copy()
    for top, bottom, _, _ in EYE_LIDS:  # frames 3 and 4 blink: the upper lid comes down 90 %
        gt[3:5, top] += 0.9 * (gt[3:5, bottom] - gt[3:5, top])
    same = eye_agreement(gt.copy(), gt)
    assert same["eyes_closed_frames"] == 2
    assert same["eye_openness_corr"] == pytest.approx(1.0)
    assert same["eye_openness_closed"] == pytest.approx(1.0)
    never = eye_agreement(open_eyes, gt)  # a render whose eyes never close
    assert never["eyes_closed_frames"] == 2
    assert never["eye_openness_closed"] == pytest.approx(10.0, rel=0.05)
    assert never["eye_openness_corr"] < 0.5


def test_expression_enters_standardized_over_the_training_frames(synthetic_dataset, tmp_path):
    trainer = Trainer(synthetic_dataset, tmp_path / "m", profile_config("tiny", "head"))
    field = trainer.model.field
    train_exp = torch.from_numpy(trainer.info.expression[trainer.info.train_ids])
    torch.testing.assert_close(field.exp_mean, train_exp.mean(0))
    # one scale for all coefficients: the largest spread (the proportions between them are kept)
    torch.testing.assert_close(field.exp_std, train_exp.std(0).max().clamp_min(0.02).expand(7))
    # the field sees (exp - mean) / std: the training mean acts as a zero expression
    for grid in field.planes:
        grid.embeddings.data.normal_(0, 1)
    xyz, enc_a = torch.rand(64, 3) * 2 - 1, torch.zeros(field.config.audio_dim)
    at_mean = field.density(xyz, enc_a, field.exp_mean.clone())["sigma"]
    field.exp_mean.zero_()
    field.exp_std.fill_(1.0)
    torch.testing.assert_close(field.density(xyz, enc_a, torch.zeros(7))["sigma"], at_mean)
