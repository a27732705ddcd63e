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


# --- the C++ CPU build's own paths: ISA copies, strided gradients, the fused tri-plane op ---------------------


@pytest.fixture
def cpu_isa(monkeypatch):
    """Run the C++ hash grid on its plain x86-64 copy ("base") or the default (AVX2 where the CPU has it)."""

    def use(isa: str) -> None:
        if isa == "base":
            monkeypatch.setenv("SYNCTALK_CPU_ISA", "base")
        else:
            monkeypatch.delenv("SYNCTALK_CPU_ISA", raising=False)

    return use


@pytest.mark.parametrize(
    "dim, level_dim, layout", [(2, 1, "ngp"), (2, 8, "tcnn"), (3, 2, "ngp"), (3, 4, "tcnn")]
)
def test_cpu_isa_copies_agree_bit_for_bit(cpp, cpu_isa, dim, level_dim, layout):
    # both copies do the same float operations in the same order: identical features and table gradients
    spec = make_grid_spec(dim, 8, level_dim, 10, 8, 300, layout=layout)  # dense and hashed levels
    emb = _table(spec).requires_grad_()
    x = torch.rand(777, dim, generator=torch.Generator().manual_seed(3))
    x[:5] = torch.tensor([0.0, 1.0, 0.5, 1.0 - 1e-7, 1e-7])[:, None]  # lattice edges and the far corner
    up = torch.randn(777, 8 * level_dim, generator=torch.Generator().manual_seed(4))
    results = []
    for isa in ("base", "default"):
        cpu_isa(isa)
        out = ce.hash_encode(x, emb, spec)
        results.append((out, torch.autograd.grad(out, emb, up)[0]))
    assert torch.equal(results[0][0], results[1][0])
    assert torch.equal(results[0][1], results[1][1])


def test_cpu_backward_reads_strided_gradients(cpp):
    # an expanded gradient (from .sum()) and a slice of a wider one are read in place, with the same result
    spec = make_grid_spec(2, 6, 2, 10, 8, 128)
    emb = _table(spec).requires_grad_()
    x = torch.rand(500, 2, generator=torch.Generator().manual_seed(5))
    out = ce.hash_encode(x, emb, spec)
    wide = torch.randn(500, 40, generator=torch.Generator().manual_seed(6))
    for up in (torch.ones(()).expand(500, 12), wide[:, 7:19]):
        assert not up.is_contiguous()
        g = torch.autograd.grad(out, emb, up, retain_graph=True)[0]
        assert torch.equal(g, torch.autograd.grad(out, emb, up.contiguous(), retain_graph=True)[0])


def _tri_plane(level_dim: int, layout: str = "ngp") -> ce.TriPlaneEncoder:
    enc = ce.TriPlaneEncoder(num_levels=6, level_dim=level_dim, log2_hashmap_size=10, base_resolution=8,
                             desired_resolution=200, bound=1.0, layout=layout)  # fmt: skip
    with torch.no_grad():
        for i, p in enumerate(enc.planes):
            p.embeddings.copy_(_table(p.spec, seed=10 + i))
    return enc


@pytest.mark.parametrize("level_dim, layout", [(1, "ngp"), (2, "tcnn"), (4, "ngp")])
def test_tri_plane_fused_op_matches_planes_and_reference(cpp, level_dim, layout):
    # the fused CPU op (all three planes in one call) against the planes one by one (same kernels: exactly
    # equal) and against the torch reference (features 1e-6, table gradients 1e-4 / 1e-5 as above)
    enc = _tri_plane(level_dim, layout)
    x = torch.rand(3, 400, 3, generator=torch.Generator().manual_seed(7)) * 2.4 - 1.2  # some outside the box
    up = torch.randn(3, 400, enc.output_dim, generator=torch.Generator().manual_seed(8))
    tables = [p.embeddings for p in enc.planes]

    def run(fused: bool):
        # an input that needs a gradient takes the plane-by-plane path
        xi = x if fused else x.clone().requires_grad_()
        out = enc(xi)
        return out, torch.autograd.grad(out, tables, up)

    with kernels(""):
        assert enc._fused_extension(x) is not None
        fused, planes = run(True), run(False)
    with kernels("torch"):
        reference = run(True)
    assert fused[0].shape == (3, 400, 3 * 6 * level_dim)
    assert torch.equal(fused[0], planes[0])
    torch.testing.assert_close(fused[0], reference[0], rtol=1e-6, atol=1e-6)
    for gf, gp, gr in zip(fused[1], planes[1], reference[1], strict=True):
        assert torch.equal(gf, gp)
        torch.testing.assert_close(gf, gr, rtol=1e-4, atol=1e-5)


def test_tri_plane_fused_op_edge_cases(cpp):
    enc = _tri_plane(2)
    x64 = torch.rand(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with kernels(""):
        assert enc._fused_extension(x64) is not None  # the fused op is what runs here
        assert enc(torch.empty(0, 3)).shape == (0, 36)
        out = enc(x64)  # converted to float32 as the planes do
    with kernels("torch"):
        assert enc._fused_extension(x64) is None
        ref_out = enc(x64)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref_out, rtol=1e-6, atol=1e-6)
    with torch.no_grad(), kernels(""):  # no graph: the fused op even for an input that requires a gradient
        x = torch.rand(9, 3).requires_grad_()
        assert enc._fused_extension(x) is not None
        assert torch.equal(enc(x), enc(x.detach()))
