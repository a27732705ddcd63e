"""march_rays_train / composite_rays_train / march_rays / composite_rays: C++ against the reference."""

from __future__ import annotations

import pytest
import torch
from kernel_helpers import both, camera_rays, kernels, sphere_grid

import cuda_ext as ce
from cuda_ext import reference as ref

AABB = torch.tensor([-1.0, -1.0, -1.0, 1.0, 1.0, 1.0])
G = 32


def _march(n, grid, *, seed=0, perturb=False, cascades=1, max_samples=16, spread=0.3):
    o, d = camera_rays(n, seed, spread=spread)
    nears, fars = ce.near_far_from_aabb(o, d, AABB)
    bitfield = ce.packbits(grid, 0.01)
    kw = dict(grid_size=G, cascades=cascades, max_samples_per_ray=max_samples, perturb=perturb)

    def run():
        gen = torch.Generator().manual_seed(seed)
        return ce.march_rays_train(o, d, AABB, bitfield, nears, fars, generator=gen, **kw)

    return (o, d, nears, fars, bitfield), both(run)


@pytest.mark.parametrize(
    "n, cascades, perturb, max_samples", [(1, 1, False, 16), (300, 1, True, 16), (500, 2, False, 64)]
)
def test_march_train_matches_reference_exactly(cpp, n, cascades, perturb, max_samples):
    (o, d, nears, fars, bitfield), (r, c) = _march(
        n, sphere_grid(G, cascades), cascades=cascades, perturb=perturb, max_samples=max_samples
    )
    for a, b in zip(r, c, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
        torch.testing.assert_close(b, a, rtol=0, atol=0)
    xyzs, dirs, ts, rays = c
    counts = rays[:, 1]
    assert counts.max() <= max_samples and counts.sum() == xyzs.shape[0]
    assert torch.equal(rays[:, 0].long(), torch.cumsum(counts.long(), 0) - counts.long())
    # samples lie in the occupied sphere, between near and far, near to far along each ray
    assert (xyzs.norm(dim=1) < 0.6 + 2 * 3**0.5 / G).all()
    ray_of = torch.repeat_interleave(torch.arange(n), counts.long())
    assert (ts[:, 0] >= nears[ray_of] - 1e-6).all() and (ts[:, 0] < fars[ray_of]).all()
    assert torch.allclose(dirs, d[ray_of])
    same_ray = ray_of[1:] == ray_of[:-1]
    assert (ts[1:, 0][same_ray] > ts[:-1, 0][same_ray]).all()
    assert (ts[:, 1] > 0).all()


@pytest.mark.parametrize("threads", [1, 2])
def test_march_train_many_chunks_matches_reference_exactly(cpp, threads):
    # the C++ marcher keeps samples per chunk of 512 rays and writes them out after a prefix sum: rays across
    # several chunks (the last one partial), cascades, jitter and wide rays (some miss) must change nothing
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        _, (r, c) = _march(1300, sphere_grid(G, 2), cascades=2, perturb=True, max_samples=24, spread=0.6)
    finally:
        torch.set_num_threads(old)
    assert (c[3][:, 1] == 0).any() and (c[3][:, 1] > 0).any()
    for a, b in zip(r, c, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
        torch.testing.assert_close(b, a, rtol=0, atol=0)


def test_near_far_edge_cases_match_reference(cpp):
    # the CPU build's inline min / max (instead of libm's fminf / fmaxf): zero direction components, origins
    # on the box's faces and corners, rays along a face
    o = torch.tensor(
        [[-1.0, 0.0, 3.0], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [-1.0, -1.0, -3.0], [2.0, 1.0, 0.0]]
    )
    d = torch.tensor(
        [[0.0, 0.0, -1.0], [-1.0, 0.0, 0.0], [0.0, -0.0, 1.0], [0.0, 0.0, 1.0], [-1.0, 0.0, -0.0]]
    )
    for min_near in (0.0, 0.05):
        r, c = both(ce.near_far_from_aabb, o, d, AABB, min_near)
        for a, b in zip(r, c, strict=True):
            torch.testing.assert_close(b, a, rtol=0, atol=0)


def test_march_train_empty_and_full_grids(cpp):
    _, (r, c) = _march(200, torch.zeros(1, G**3))
    for out in (r, c):
        assert out[0].shape == (0, 3) and (out[3][:, 1] == 0).all()
    (o, d, nears, fars, _), (r, c) = _march(200, torch.ones(1, G**3), max_samples=8)
    for a, b in zip(r, c, strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=0)
    hit = nears < 1e9
    assert hit.any() and (~hit).any()
    assert (c[3][hit, 1] == 8).all() and (c[3][~hit, 1] == 0).all()  # every ray that hits is full


def test_march_train_zero_rays_and_non_contiguous_input(cpp):
    _, (r, c) = _march(0, sphere_grid(G))
    assert all(t.shape[0] == 0 for t in r + c)
    o, d = camera_rays(64)
    nears, fars = ce.near_far_from_aabb(o, d, AABB)
    bitfield = ce.packbits(sphere_grid(G), 0.01)
    o_nc = o.t().contiguous().t()  # same values, column-major strides
    assert not o_nc.is_contiguous()
    with kernels(""):
        a = ce.march_rays_train(o, d, AABB, bitfield, nears, fars, grid_size=G)
        b = ce.march_rays_train(o_nc, d, AABB, bitfield, nears, fars, grid_size=G)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)


def _hard_rays(n: int, seed: int = 7):
    """Rays from outside, inside and on the box, some along the axes (zero direction components), some missing."""
    g = torch.Generator().manual_seed(seed)
    o = torch.cat(
        [torch.randn(n // 2, 3, generator=g) * 2.5, torch.rand(n - n // 2, 3, generator=g) * 1.8 - 0.9]
    )
    d = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=1)
    d[:40] = torch.tensor([[0.0, 0.0, -1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, 1.0]]).repeat(
        10, 1
    )
    o[:8] = torch.tensor([[-1.0, 0.0, 0.3], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [0.5, -1.0, 0.5]]).repeat(2, 1)
    return o, d


def _isa_runs(monkeypatch, fn):
    """fn() on the default CPU copy (AVX2 where the CPU has it), the plain copy and the torch reference."""
    monkeypatch.delenv("SYNCTALK_CPU_ISA", raising=False)
    default = fn()
    monkeypatch.setenv("SYNCTALK_CPU_ISA", "base")
    plain = fn()
    monkeypatch.delenv("SYNCTALK_CPU_ISA", raising=False)
    with kernels("torch"):
        reference = fn()
    return default, plain, reference


@pytest.mark.parametrize(
    "cascades, grid_size, dt_gamma, max_samples",
    [(1, 32, 0.0, 12), (1, 16, 1 / 256, 64), (3, 32, 1 / 128, 24)],
)
def test_march_train_eight_lane_copy_matches_plain_loop_and_reference(
    cpp, monkeypatch, cascades, grid_size, dt_gamma, max_samples
):
    # The AVX2 marcher (eight rays per register, where the CPU has AVX2) against the plain per-ray loop
    # (SYNCTALK_CPU_ISA=base) and the reference, bit for bit. A random grid (many occupied / empty switches per
    # ray), several cascades (a per-lane cascade choice), rays from outside, inside and on the box, rays along
    # the axes (zero direction components), some that miss, jitter, and a sample budget that some rays reach.
    n = 1100  # three chunks, the last one partial; more rays than lanes end at once
    o, d = _hard_rays(n)
    g = torch.Generator().manual_seed(7)
    grid = (torch.rand(cascades, grid_size**3, generator=g) < 0.3).float() * 10
    bitfield = ce.packbits(grid, 0.01)
    nears, fars = ce.near_far_from_aabb(o, d, AABB)
    kw = dict(grid_size=grid_size, cascades=cascades, dt_gamma=dt_gamma, max_samples_per_ray=max_samples)

    for perturb in (False, True):

        def run(perturb=perturb):
            gen = torch.Generator().manual_seed(3)
            return ce.march_rays_train(
                o, d, AABB, bitfield, nears, fars, perturb=perturb, generator=gen, **kw
            )

        default, plain, reference = _isa_runs(monkeypatch, run)
        counts = default[3][:, 1]
        assert (counts == max_samples).any() and ((counts > 0) & (counts < max_samples)).any()
        assert (counts == 0).any()
        for a, b, r in zip(default, plain, reference, strict=True):
            assert torch.equal(a, b) and torch.equal(a, r)


@pytest.mark.parametrize("cascades, n_step, perturb", [(1, 1, False), (1, 8, True), (3, 4, True)])
def test_inference_round_eight_lane_copy_matches_plain_loop_and_reference(
    cpp, monkeypatch, cascades, n_step, perturb
):
    # one march_rays round: slots of dead rays (-1) are skipped, rays resume mid-way (rays_t past near), slots a
    # ray does not fill stay zero; the eight-lane copy, the plain loop and the reference agree bit for bit
    n = 900
    o, d = _hard_rays(n, seed=11)
    g = torch.Generator().manual_seed(5)
    grid = (torch.rand(cascades, G**3, generator=g) < 0.3).float() * 10
    bitfield = ce.packbits(grid, 0.01)
    nears, fars = ce.near_far_from_aabb(o, d, AABB)
    alive = torch.randperm(n, generator=g)[:700].int()
    alive[::9] = -1
    rays_t = nears[alive.clamp_min(0).long()] + torch.rand(700, generator=g) * 0.5

    def run():
        gen = torch.Generator().manual_seed(3)
        return ce.march_rays(
            650, n_step, alive, rays_t, o, d, AABB, bitfield,
            grid_size=G, cascades=cascades, dt_gamma=1 / 128, perturb=perturb, generator=gen, fars=fars,
        )  # fmt: skip

    default, plain, reference = _isa_runs(monkeypatch, run)
    filled = (default[2][:, 1] > 0).reshape(650, n_step)
    assert filled.all(1).any() and (~filled).all(1).any()
    assert n_step == 1 or (filled.any(1) & ~filled.all(1)).any()  # rays that end mid-round
    assert not filled[::9].any()  # dead slots march nothing
    for a, b, r in zip(default, plain, reference, strict=True):
        assert torch.equal(a, b) and torch.equal(a, r)


def test_march_train_bitfield_not_in_whole_words_takes_the_plain_loop(cpp):
    # a 2^3 grid packs into one byte: the eight-lane copy reads 32-bit words, so such a grid marches per ray
    o, d = camera_rays(50, spread=0.6)
    nears, fars = ce.near_far_from_aabb(o, d, AABB)
    bitfield = ce.packbits(torch.tensor([[10.0, 0, 10, 0, 0, 10, 10, 0]]), 0.01)
    r, c = both(ce.march_rays_train, o, d, AABB, bitfield, nears, fars, grid_size=2, max_samples_per_ray=64)
    assert c[0].shape[0] > 0
    for a, b in zip(r, c, strict=True):
        assert torch.equal(a, b)


def _composite_inputs(n_rays, max_count, extras_dim, seed=0):
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(0, max_count + 1, (n_rays,), generator=g)
    if n_rays:
        counts[0] = 0  # an empty ray
    m = int(counts.sum())
    rays = torch.stack([torch.cumsum(counts, 0) - counts, counts], 1).int()
    sigmas = torch.rand(m, generator=g) * 30
    rgbs = torch.rand(m, 3, generator=g)
    t0 = torch.rand(m, generator=g) + 2
    ts = torch.stack([t0, torch.rand(m, generator=g) * 0.05 + 0.005], 1)
    extras = torch.rand(m, extras_dim, generator=g) if extras_dim else None
    return sigmas, rgbs, ts, rays, extras


@pytest.mark.parametrize("n_rays, max_count, extras_dim", [(0, 4, 2), (1, 16, 0), (400, 16, 3), (50, 200, 1)])
def test_composite_train_forward_backward_match_reference(cpp, n_rays, max_count, extras_dim):
    sigmas, rgbs, ts, rays, extras = _composite_inputs(n_rays, max_count, extras_dim)
    leaves = [sigmas.requires_grad_(), rgbs.requires_grad_()] + (
        [extras.requires_grad_()] if extras_dim else []
    )
    r, c = both(ce.composite_rays_train, sigmas, rgbs, ts, rays, extras)
    for a, b in zip(r, c, strict=True):
        assert a.shape == b.shape
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    # the same random upstream gradient through both
    g = torch.Generator().manual_seed(1)
    ups = [torch.randn(t.shape, generator=g) for t in r]
    if sigmas.numel():
        gr = torch.autograd.grad(r, leaves, ups)
        gc = torch.autograd.grad(c, leaves, ups)
        for a, b in zip(gr, gc, strict=True):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)


def test_composite_train_stops_at_transmittance_threshold(cpp):
    sigmas = torch.full((10,), 100.0)  # opaque: T after 2 samples = exp(-10) < 1e-4
    ts = torch.stack([torch.arange(10.0), torch.full((10,), 0.05)], 1)
    rays = torch.tensor([[0, 10]], dtype=torch.int32)
    for mode in ("torch", ""):
        with kernels(mode):
            w, ws, depth, image, _ = ce.composite_rays_train(sigmas, torch.ones(10, 3), ts, rays)
        assert (w[2:] == 0).all() and (w[:2] > 0).all()
        assert ws.item() == pytest.approx(1 - torch.exp(torch.tensor(-10.0)).item(), abs=1e-6)
        assert torch.allclose(image, ws[:, None].expand(1, 3))


def test_reference_composite_gradcheck_float64():
    sigmas, rgbs, ts, rays, extras = _composite_inputs(6, 5, 2, seed=3)
    args = [t.double().requires_grad_() for t in (sigmas * 0.1, rgbs, extras)]

    def fn(s, c, e):
        return ref.composite_rays_train(s, c, ts.double(), rays, e, 1e-4)

    assert torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-5)


def _render_inference(o, d, bitfield, n_step, sigma_fn, extras_dim=2):
    n = o.shape[0]
    nears, _ = ce.near_far_from_aabb(o, d, AABB)
    alive = torch.arange(n, dtype=torch.int32)
    rays_t = nears.clone()
    ws, depth, image = torch.zeros(n), torch.zeros(n), torch.zeros(n, 3)
    extras_sum = torch.zeros(n, extras_dim)
    rounds = 0
    while alive.numel():
        k = alive.numel()
        xyzs, dirs, ts = ce.march_rays(k, n_step, alive, rays_t, o, d, AABB, bitfield, grid_size=G)
        sig, col, ex = sigma_fn(xyzs, dirs)
        ce.composite_rays(k, n_step, alive, rays_t, sig, col, ts, ws, depth, image, ex, extras_sum)
        keep = alive >= 0
        alive, rays_t = alive[keep].contiguous(), rays_t[keep].contiguous()
        rounds += 1
    return ws, depth, image, extras_sum, rounds


def _field(xyzs, dirs):
    sig = 5.0 + 20.0 * xyzs[:, 0].abs()
    col = torch.sigmoid(torch.cat([xyzs, dirs[:, :1] * 0 + 0.3], 1)[:, :3] * 3)
    return sig, col, torch.stack([xyzs[:, 1], xyzs.norm(dim=1)], 1)


def test_inference_rounds_equal_training_composite(cpp):
    o, d = camera_rays(300, seed=5)
    bitfield = ce.packbits(sphere_grid(G), 0.01)
    nears, fars = ce.near_far_from_aabb(o, d, AABB)
    results = {}
    for mode in ("torch", ""):
        with kernels(mode):
            xyzs, dirs, ts, rays = ce.march_rays_train(o, d, AABB, bitfield, nears, fars, grid_size=G,
                                                       max_samples_per_ray=1024)  # fmt: skip
            sig, col, ex = _field(xyzs, dirs)
            _, ws, depth, image, exs = ce.composite_rays_train(sig, col, ts, rays, ex)
            results[mode] = _render_inference(o, d, bitfield, 3, _field)
        torch.testing.assert_close(results[mode][0], ws, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(results[mode][1], depth, rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(results[mode][2], image, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(results[mode][3], exs, rtol=1e-5, atol=1e-5)
        assert results[mode][4] > 2  # several compaction rounds happened
    for a, b in zip(results["torch"][:4], results[""][:4], strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


def test_one_inference_round_matches_reference(cpp):
    o, d = camera_rays(100, seed=2)
    bitfield = ce.packbits(sphere_grid(G), 0.01)
    nears, _ = ce.near_far_from_aabb(o, d, AABB)
    alive = torch.arange(100, dtype=torch.int32)
    alive[::7] = -1  # dead rays are skipped
    outs = {}
    for mode in ("torch", ""):
        a, rt = alive.clone(), nears.clone()
        ws, depth, image, exs = (
            torch.rand(100) * 0.5,
            torch.zeros(100),
            torch.zeros(100, 3),
            torch.zeros(100, 2),
        )
        ws[:] = torch.linspace(0, 0.9, 100)
        with kernels(mode):
            xyzs, dirs, ts = ce.march_rays(100, 4, a, rt, o, d, AABB, bitfield, grid_size=G)
            sig, col, ex = _field(xyzs, dirs)
            ce.composite_rays(100, 4, a, rt, sig, col, ts, ws, depth, image, ex, exs)
        outs[mode] = (xyzs, ts, a, rt, ws, depth, image, exs)
    for x, y in zip(outs["torch"], outs[""], strict=True):
        torch.testing.assert_close(y, x, rtol=1e-5, atol=1e-6)
    a = outs[""][2]
    assert (a[::7] == -1).all() and (a >= 0).any() and (a == -1).sum() > 100 // 7
