"""Hash grid encoding: C++ against the reference, gradients, layout and the encoder modules."""

from __future__ import annotations

import pytest
import torch
from kernel_helpers import both, kernels

import cuda_ext as ce
from cuda_ext import reference as ref
from cuda_ext.errors import KernelInputError
from cuda_ext.geometry import make_grid_spec


def _table(spec, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(spec.offsets[-1], spec.level_dim, generator=g) * 2 - 1


@pytest.mark.parametrize(
    "dim, levels, level_dim, log2, align, n",
    [(2, 12, 1, 14, False, 2000), (3, 6, 2, 12, False, 1500), (2, 4, 2, 10, True, 1), (3, 3, 4, 8, False, 0)],
)
def test_forward_backward_match_reference(cpp, dim, levels, level_dim, log2, align, n):
    spec = make_grid_spec(dim, levels, level_dim, log2, 16, 256, align)
    emb = _table(spec).requires_grad_()
    x = torch.rand(n, dim, generator=torch.Generator().manual_seed(1)).requires_grad_()
    r, c = both(ce.hash_encode, x, emb, spec)
    assert c.shape == (n, levels * level_dim)
    torch.testing.assert_close(c, r, rtol=1e-6, atol=1e-6)
    if n:
        up = torch.randn(r.shape, generator=torch.Generator().manual_seed(2))
        gr = torch.autograd.grad(r, [x, emb], up)
        gc = torch.autograd.grad(c, [x, emb], up)
        torch.testing.assert_close(gc[0], gr[0], rtol=1e-4, atol=1e-4)  # input gradient
        torch.testing.assert_close(gc[1], gr[1], rtol=1e-4, atol=1e-5)  # table gradient


def test_table_gradient_only_when_input_needs_none(cpp):
    spec = make_grid_spec(3, 4, 2, 10, 8, 64)
    emb = _table(spec).requires_grad_()
    x = torch.rand(100, 3)
    with kernels(""):
        out = ce.hash_encode(x, emb, spec)
        out.sum().backward()
    assert emb.grad is not None and x.grad is None
    # each point spreads weight 1 per level and channel: the table gradient sums to N * L * C / C per channel
    torch.testing.assert_close(emb.grad.sum(0), torch.full((2,), 100.0 * 4), rtol=1e-5, atol=1e-3)


def test_reference_gradcheck_float64():
    spec = make_grid_spec(2, 3, 2, 6, 4, 16)
    emb = _table(spec).double().requires_grad_()
    x = (torch.rand(5, 2, dtype=torch.float64) * 0.8 + 0.1).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: ref.hash_encode(a, b, spec), [x, emb], eps=1e-6, atol=1e-5)


def test_coarse_levels_are_dense_and_interpolate_exactly():
    spec = make_grid_spec(2, 2, 1, 14, 4, 200)
    v = spec.verts[0]
    assert v**2 <= spec.offsets[1]  # the coarse level is stored densely: no collisions
    corners = torch.stack(torch.meshgrid(torch.arange(v), torch.arange(v), indexing="ij"), -1).reshape(-1, 2)
    rows = ref.grid_index(corners, spec, 0)
    assert rows.unique().numel() == v * v
    # at a lattice vertex the encoding is that vertex's row (align_corners: vertex i at x = i / scale)
    spec_a = make_grid_spec(2, 1, 1, 14, 5, 5, align_corners=True)
    emb = _table(spec_a)
    x = torch.tensor([[0.25, 0.5]])  # scale 4 -> vertex (1, 2)
    row = ref.grid_index(torch.tensor([[1, 2]]), spec_a, 0)
    for mode in ("torch", ""):
        with kernels(mode):
            assert ce.hash_encode(x, emb, spec_a).item() == pytest.approx(emb[row].item())


def test_encoder_modules():
    enc = ce.HashGridEncoder(3, num_levels=4, level_dim=2, log2_hashmap_size=10, base_resolution=8,
                             desired_resolution=32, bound=2.0)  # fmt: skip
    x = torch.rand(2, 5, 3) * 4 - 2
    y = enc(x)
    assert y.shape == (2, 5, 8) and enc.output_dim == 8
    direct = ce.hash_encode(((x + 2) / 4).reshape(-1, 3), enc.embeddings, enc.spec).reshape(2, 5, 8)
    torch.testing.assert_close(y, direct)
    tri = ce.TriPlaneEncoder(
        num_levels=3, level_dim=1, log2_hashmap_size=8, base_resolution=4, desired_resolution=16
    )
    pts = torch.rand(7, 3)
    out = tri(pts)
    assert out.shape == (7, 9)
    # the xy plane's features depend on x and y only
    moved = pts.clone()
    moved[:, 2] = torch.rand(7)
    torch.testing.assert_close(tri(moved)[:, :3], out[:, :3])
    with pytest.raises(KernelInputError, match="CUDA only"):
        ce.HashGridEncoder(2, dtype=torch.float16)(torch.rand(3, 2))
    with pytest.raises(KernelInputError, match=r"\[\.\.\., 3\]"):
        enc(torch.rand(4, 2))
