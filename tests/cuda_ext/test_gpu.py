"""CUDA kernels against the torch reference (computed on CPU copies). Marked gpu: skipped without a GPU;
on a GPU host a CUDA build failure fails them."""

from __future__ import annotations

import pytest
import torch
from kernel_helpers import camera_rays, kernels, sphere_grid

import cuda_ext as ce
from cuda_ext import reference as ref
from cuda_ext.geometry import make_grid_spec, make_march_spec

pytestmark = pytest.mark.gpu
AABB = torch.tensor([-1.0, -1.0, -1.0, 1.0, 1.0, 1.0])
G = 64


def _cpu(ts):
    return [t.cpu() for t in ts]


def test_backend_is_cuda(cuda):
    assert ce.backend_name("cuda") == "cuda"


def test_near_far_morton_packbits(cuda):
    o, d = camera_rays(5000, spread=1.0)
    near, far = ce.near_far_from_aabb(o.cuda(), d.cuda(), AABB)
    rn, rf = ref.near_far_from_aabb(o, d, tuple(AABB.tolist()), 0.05)
    torch.testing.assert_close(near.cpu(), rn)
    torch.testing.assert_close(far.cpu(), rf)
    coords = torch.randint(0, 1024, (10000, 3), dtype=torch.int32)
    m = ce.morton3D(coords.cuda())
    assert torch.equal(m.cpu(), ref.morton3D(coords))
    assert torch.equal(ce.morton3D_invert(m).cpu(), coords)
    grid = torch.rand(2, 32**3)
    assert torch.equal(ce.packbits(grid.cuda(), 0.4).cpu(), ref.packbits(grid, 0.4))


@pytest.mark.parametrize("cascades, perturb", [(1, False), (2, True)])
def test_march_train(cuda, cascades, perturb):
    n = 20000
    o, d = camera_rays(n, seed=4)
    nears, fars = ref.near_far_from_aabb(o, d, tuple(AABB.tolist()), 0.05)
    bitfield = ref.packbits(sphere_grid(G, cascades), 0.01)
    noise = torch.rand(n) if perturb else None
    spec = make_march_spec(AABB, G, cascades, 1 / 256, 1024, 16)
    r = ref.march_rays_train(o, d, bitfield, nears, fars, spec, noise)
    # same noise on the GPU: the wrapper draws it from the generator, so call the extension directly
    ext = ce.loader.get("cuda")
    nz = noise.cuda() if perturb else torch.empty(0, device="cuda")
    c = _cpu(ext.march_rays_train(o.cuda(), d.cuda(), bitfield.cuda(), nears.cuda(), fars.cuda(), nz,
                                  spec.packed(), G, cascades, 16))  # fmt: skip
    # no FMA on either side, so samples agree exactly; tolerate a handful of rays if a device op differs
    same = (r[3][:, 1] == c[3][:, 1]).float().mean().item()
    assert same > 0.999
    if same == 1.0:
        for a, b in zip(r, c, strict=True):
            torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-6)
    wrapped = ce.march_rays_train(o.cuda(), d.cuda(), AABB.cuda(), bitfield.cuda(), nears.cuda(), fars.cuda(),
                                  grid_size=G, cascades=cascades)  # fmt: skip
    assert wrapped[0].is_cuda and wrapped[3].dtype == torch.int32


def test_composite_train_forward_backward(cuda):
    g = torch.Generator().manual_seed(0)
    counts = torch.randint(0, 17, (5000,), generator=g)
    m = int(counts.sum())
    rays = torch.stack([torch.cumsum(counts, 0) - counts, counts], 1).int()
    sig, rgb, ex = (
        torch.rand(m, generator=g) * 30,
        torch.rand(m, 3, generator=g),
        torch.rand(m, 3, generator=g),
    )
    ts = torch.stack([torch.rand(m, generator=g) + 2, torch.rand(m, generator=g) * 0.05 + 0.005], 1)
    leaves_r = [t.clone().requires_grad_() for t in (sig, rgb, ex)]
    leaves_c = [t.cuda().requires_grad_() for t in (sig, rgb, ex)]
    r = ref.composite_rays_train(leaves_r[0], leaves_r[1], ts, rays, leaves_r[2], 1e-4)
    c = ce.composite_rays_train(leaves_c[0], leaves_c[1], ts.cuda(), rays.cuda(), leaves_c[2])
    for a, b in zip(r, c, strict=True):
        torch.testing.assert_close(b.cpu(), a, rtol=1e-4, atol=1e-5)
    ups = [torch.randn(t.shape, generator=g) for t in r]
    gr = torch.autograd.grad(r, leaves_r, ups)
    gc = torch.autograd.grad(c, leaves_c, [u.cuda() for u in ups])
    for a, b in zip(gr, gc, strict=True):
        torch.testing.assert_close(b.cpu(), a, rtol=1e-3, atol=1e-4)


def test_inference_round(cuda):
    n = 3000
    o, d = camera_rays(n, seed=6)
    bitfield = ref.packbits(sphere_grid(G), 0.01)
    nears, _ = ref.near_far_from_aabb(o, d, tuple(AABB.tolist()), 0.05)
    res = {}
    for dev in ("cpu", "cuda"):
        # clone: composite_rays advances rays_t in place, and nears.to("cpu") is nears itself, so without
        # the copy the CUDA side would start from where the reference round ended (this test's old bug)
        alive, rt = torch.arange(n, dtype=torch.int32, device=dev), nears.clone().to(dev)
        ws, depth, image = (
            torch.zeros(n, device=dev),
            torch.zeros(n, device=dev),
            torch.zeros(n, 3, device=dev),
        )
        with kernels("torch" if dev == "cpu" else ""):
            xyzs, dirs, ts = ce.march_rays(
                n, 8, alive, rt, o.to(dev), d.to(dev), AABB, bitfield.to(dev), grid_size=G
            )
            sig = 10 + 10 * xyzs[:, 0].abs()
            ce.composite_rays(n, 8, alive, rt, sig, torch.sigmoid(xyzs), ts, ws, depth, image)
        res[dev] = _cpu([xyzs, ts, alive, rt, ws, depth, image])
    for a, b in zip(res["cpu"], res["cuda"], strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    assert (res["cuda"][1][:, 1] > 0).any() and (res["cuda"][2] == -1).any()  # samples taken, some rays ended


def _render_rounds(o, d, bitfield, nears, n_step):
    """Full inference loop (march, composite, compact) on o's device: ws, depth, image, extras_sum, rounds."""
    n, dev = o.shape[0], o.device
    alive, rays_t = torch.arange(n, dtype=torch.int32, device=dev), nears.clone()
    ws, depth, image, exs = (torch.zeros(n, device=dev), torch.zeros(n, device=dev),
                             torch.zeros(n, 3, device=dev), torch.zeros(n, 2, device=dev))  # fmt: skip
    rounds = 0
    while alive.numel():
        k = alive.numel()
        xyzs, dirs, ts = ce.march_rays(k, n_step, alive, rays_t, o, d, AABB, bitfield, grid_size=G)
        sig = 5 + 20 * xyzs[:, 0].abs()
        ex = torch.stack([xyzs[:, 1], xyzs.norm(dim=1)], 1)
        ce.composite_rays(
            k, n_step, alive, rays_t, sig, torch.sigmoid(xyzs * 3), ts, ws, depth, image, ex, exs
        )
        keep = alive >= 0
        alive, rays_t = alive[keep].contiguous(), rays_t[keep].contiguous()
        rounds += 1
    return [ws, depth, image, exs], rounds


def test_inference_rounds_with_compaction(cuda):
    o, d = camera_rays(2000, seed=7)
    bitfield = ref.packbits(sphere_grid(G), 0.01)
    nears, _ = ref.near_far_from_aabb(o, d, tuple(AABB.tolist()), 0.05)
    with kernels("torch"):
        r, r_rounds = _render_rounds(o, d, bitfield, nears, 4)
    with kernels(""):
        c, c_rounds = _render_rounds(o.cuda(), d.cuda(), bitfield.cuda(), nears.cuda(), 4)
    assert c_rounds == r_rounds > 2
    for a, b in zip(r, c, strict=True):
        torch.testing.assert_close(b.cpu(), a, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("dim, level_dim", [(2, 1), (3, 2)])
def test_hash_encode_float32(cuda, dim, level_dim):
    spec = make_grid_spec(dim, 12, level_dim, 16, 64, 512)
    g = torch.Generator().manual_seed(0)
    emb = torch.rand(spec.offsets[-1], level_dim, generator=g) * 2 - 1
    x = torch.rand(100000, dim, generator=g)
    er, xr = emb.clone().requires_grad_(), x.clone().requires_grad_()
    ec, xc = emb.cuda().requires_grad_(), x.cuda().requires_grad_()
    r = ref.hash_encode(xr, er, spec)
    c = ce.hash_encode(xc, ec, spec)
    torch.testing.assert_close(c.cpu(), r, rtol=1e-5, atol=1e-5)
    up = torch.randn(r.shape, generator=g)
    gr = torch.autograd.grad(r, [xr, er], up)
    gc = torch.autograd.grad(c, [xc, ec], up.cuda())
    torch.testing.assert_close(gc[0].cpu(), gr[0], rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(gc[1].cpu(), gr[1], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dim, log2_rows", [(2, 14), (3, 12)])
def test_hash_table_grad_large_batch(cuda, dim, log2_rows):
    """Enough points that the table gradient of levels whose rows fit shared memory is summed per block."""
    spec = make_grid_spec(dim, 12, 2, log2_rows, 64, 512)
    g = torch.Generator().manual_seed(1)
    emb = torch.rand(spec.offsets[-1], 2, generator=g) * 2 - 1
    x = torch.rand(300000, dim, generator=g)
    er, ec = emb.clone().requires_grad_(), emb.cuda().requires_grad_()
    up = torch.randn(x.shape[0], 24, generator=g)
    (gr,) = torch.autograd.grad(ref.hash_encode(x, er, spec), [er], up)
    (gc,) = torch.autograd.grad(ce.hash_encode(x.cuda(), ec, spec), [ec], up.cuda())
    torch.testing.assert_close(gc.cpu(), gr, rtol=1e-4, atol=1e-3)


def test_hash_encode_float16_table(cuda):
    enc = ce.TriPlaneEncoder(num_levels=12, level_dim=2, log2_hashmap_size=14, dtype=torch.float16).cuda()
    with torch.no_grad():
        for p in enc.parameters():
            p.uniform_(-1, 1)
    x = torch.rand(5000, 3, device="cuda")
    y = enc(x)
    assert y.dtype == torch.float16 and y.shape == (5000, 72)
    ref32 = torch.cat(
        [
            ref.hash_encode(x[:, list(p)].cpu(), e.embeddings.float().cpu(), e.spec)
            for e, p in zip(enc.planes, enc.PLANES, strict=True)
        ],
        dim=1,
    )
    torch.testing.assert_close(y.float().cpu(), ref32, rtol=1e-2, atol=1e-2)
    y.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float16 and torch.isfinite(p.grad).all()
               for p in enc.parameters())  # fmt: skip
