"""The training step's fast paths compute what the plain ones do, up to float rounding: the fused
tri-plane encode of the head field (one kernel call for the three planes on the CPU, same tables and
state_dict keys), one audio-net call for the step's and the lip-sync loss's frames (same random draws),
the per-sample gather of the frames' conditions, the fused AdamW on the CPU, and the occupancy grid's
smaller CPU chunks."""

from __future__ import annotations

import pytest
import torch

from cuda_ext import backend_name
from gpu_worker.model.audio_net import window_indices
from gpu_worker.model.config import profile_config
from gpu_worker.model.field import TriPlaneField
from gpu_worker.model.model import per_sample
from gpu_worker.model.trainer import Trainer

# the fused op sums the same float32 products as the per-plane kernels, in another order at most
TOL = {"rtol": 1e-5, "atol": 1e-6}


def _field() -> TriPlaneField:
    torch.manual_seed(0)
    field = TriPlaneField(profile_config("preview").field, torch.tensor([-1.0, -1, -1, 1, 1, 1]), n_frames=4)
    for grid in field.planes:  # tables that vary in space, not the near-zero initial ones
        grid.embeddings.data.uniform_(-1, 1)
    return field


def _per_plane(field: TriPlaneField, xyz: torch.Tensor) -> torch.Tensor:
    """enc_x plane by plane, as the field computed it before the fused op: [M, 3 * L * F]."""
    lo, hi = field.aabb[:3], field.aabb[3:]
    u = ((xyz - lo) / (hi - lo)).clamp(0, 1)
    dims = ([0, 1], [1, 2], [0, 2])
    return torch.cat([grid(u[:, d]) for grid, d in zip(field.planes, dims, strict=True)], -1)


def test_field_keeps_its_parameter_layout():
    # model files name the tables field.planes.{0,1,2}.embeddings: the fused encoder must not add keys
    keys = [k for k in _field().state_dict() if "planes" in k]
    assert keys == [f"planes.{i}.embeddings" for i in range(3)]
    assert len(list(_field().parameters())) == len({id(p) for p in _field().parameters()})


@pytest.mark.skipif(backend_name("cpu") != "cpp", reason="the fused op is in the C++ CPU build")
def test_fused_tri_plane_encode_matches_the_planes_one_by_one():
    field = _field()
    gen = torch.Generator().manual_seed(1)
    xyz = torch.rand(3000, 3, generator=gen) * 2.4 - 1.2  # some outside the box: clamped to its faces
    assert field._tri_plane._fused_extension(xyz) is not None  # the path under test is the fused one
    grad_out = torch.randn(3000, field.config.num_levels * field.config.level_dim * 3, generator=gen)

    fused = field.encode(xyz)
    fused.backward(grad_out)
    fused_grads = [g.embeddings.grad.clone() for g in field.planes]
    field.zero_grad(set_to_none=True)
    plain = _per_plane(field, xyz)
    plain.backward(grad_out)

    torch.testing.assert_close(fused, plain, **TOL)
    for g_fused, grid in zip(fused_grads, field.planes, strict=True):
        torch.testing.assert_close(g_fused, grid.embeddings.grad, **TOL)


def test_points_that_need_a_gradient_take_the_per_plane_path():
    field = _field()
    xyz = (torch.rand(200, 3) * 2 - 1).requires_grad_(True)
    assert field._tri_plane._fused_extension(xyz) is None  # the fused op gives x no gradient
    enc = field.encode(xyz)
    torch.testing.assert_close(enc, _per_plane(field, xyz), **TOL)
    enc.sum().backward()
    assert xyz.grad is not None and xyz.grad.abs().sum() > 0


def test_one_audio_net_call_gives_the_two_calls_codes_and_draws(synthetic_dataset, tmp_path):
    cfg = profile_config("tiny", "head")
    cfg.data.audio_warp, cfg.data.audio_gain_db = 0.15, 6.0
    trainer = Trainer(synthetic_dataset, tmp_path / "m", cfg)
    frames = [int(i) for i in trainer.info.train_ids[:3]]
    before = trainer.gen.get_state()
    enc_a, (lip_frames, lip_codes) = trainer._step_audio_codes(frames)

    # as the step did it with two calls: the step's windows augmented and encoded, then the loss's
    # frames drawn, then their windows augmented and encoded
    gen = torch.Generator()
    gen.set_state(before)

    def codes(fr: torch.Tensor) -> torch.Tensor:
        idx = window_indices(fr, cfg.audio.window, trainer.spec.n_frames)  # [F, W]
        return trainer.model.audio_code(trainer.audio_augment(trainer.feats[idx], gen))

    ref = codes(torch.tensor(frames))
    ids = trainer.info.train_ids
    picks = torch.randint(len(ids), (cfg.loss.lip_sync_frames,), generator=gen)
    ref_lip_frames = torch.as_tensor(ids[picks.numpy()])
    ref_lip = codes(ref_lip_frames)
    assert torch.equal(trainer.gen.get_state(), gen.get_state())  # the same draws, in the same order
    assert torch.equal(lip_frames, ref_lip_frames)
    torch.testing.assert_close(enc_a, ref, **TOL)
    torch.testing.assert_close(lip_codes, ref_lip, **TOL)


def test_per_sample_gather_matches_indexing_and_its_gradient():
    gen = torch.Generator().manual_seed(2)
    rows = torch.randn(8, 32, generator=gen, requires_grad=True)
    g = torch.randint(8, (5000,), generator=gen)
    grad_out = torch.randn(5000, 32, generator=gen)
    out = per_sample(rows, g)
    out.backward(grad_out)
    got = rows.grad.clone()
    rows.grad = None
    ref = rows[g]
    ref.backward(grad_out)
    assert torch.equal(out, ref)
    torch.testing.assert_close(got, rows.grad, **TOL)  # the same sums, perhaps in another order


def test_cpu_adamw_is_fused_and_takes_the_foreach_steps(synthetic_dataset, tmp_path):
    trainer = Trainer(synthetic_dataset, tmp_path / "m", profile_config("tiny", "head"))
    trainer._enter_stage("head")
    opt = trainer.optimizer
    assert opt.defaults["fused"] and not opt.defaults["foreach"]
    # the same groups and settings with foreach, from the same parameters and gradients
    twins = [[p.detach().clone().requires_grad_(True) for p in g["params"]] for g in opt.param_groups]
    settings = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
    ref = torch.optim.AdamW(
        [{**s, "params": t, "foreach": True, "fused": None} for s, t in zip(settings, twins, strict=True)]
    )
    gen = torch.Generator().manual_seed(3)
    for _ in range(5):
        for group, twin in zip(opt.param_groups, twins, strict=True):
            for p, q in zip(group["params"], twin, strict=True):
                p.grad = torch.randn(p.shape, generator=gen) * 1e-3
                q.grad = p.grad.clone()
        opt.step()
        ref.step()
    for group, twin in zip(opt.param_groups, twins, strict=True):
        for p, q in zip(group["params"], twin, strict=True):
            torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-5, atol=1e-6)


def test_grid_update_chunks_give_the_same_densities(synthetic_dataset, tmp_path):
    trainer = Trainer(synthetic_dataset, tmp_path / "m", profile_config("tiny", "head"))
    field, grid = trainer.model.field, trainer.model.grid
    conds = [trainer._conditions(int(i)) for i in trainer.info.train_ids[:2]]
    densities = []
    for chunk in (None, 65536, 1000):  # the CPU default (16384), the CUDA one, and many small chunks
        grid.density.fill_(-1.0)
        grid.updates.zero_()
        grid.update(lambda xyz: field.max_density(xyz, conds), torch.Generator().manual_seed(4), chunk=chunk)
        densities.append(grid.density.clone())
    assert torch.equal(densities[0], densities[1]) and torch.equal(densities[0], densities[2])
