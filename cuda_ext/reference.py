"""Pure-torch reference of every kernel: the definition the C++ and CUDA kernels are tested against.

Written for clarity and for exact agreement with csrc/*_math.h (same float32 operations in the same
order where a comparison depends on them), not for speed. Runs on any device and dtype (float64 too,
for gradcheck); differentiable through autograd where the public op is.
"""

from __future__ import annotations

import torch

from .geometry import GridSpec, MarchSpec

MISS = 1e10  # near = far = MISS for a ray that does not hit the box
RCP_EPS = 1e-15
PRIMES = (1, 2654435761, 805459861)


# ---------------------------------------------------------------------------------------------
# Ray / box
# ---------------------------------------------------------------------------------------------


def safe_rcp(d: torch.Tensor) -> torch.Tensor:
    """1 / d with |d| >= RCP_EPS and the sign of (d >= 0), matching safe_rcp() in march_math.h."""
    return 1.0 / torch.where(d >= 0, d.clamp_min(RCP_EPS), d.clamp_max(-RCP_EPS))


def near_far_from_aabb(
    rays_o: torch.Tensor, rays_d: torch.Tensor, aabb: tuple[float, ...], min_near: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Slab test. rays [N, 3] -> nears [N], fars [N]; misses (and boxes behind the ray) get MISS."""
    lo = torch.tensor(aabb[:3], dtype=rays_o.dtype, device=rays_o.device)
    hi = torch.tensor(aabb[3:], dtype=rays_o.dtype, device=rays_o.device)
    rd = safe_rcp(rays_d)  # [N, 3]
    t1 = (lo - rays_o) * rd
    t2 = (hi - rays_o) * rd
    near = torch.minimum(t1, t2).amax(dim=1)  # [N]
    far = torch.maximum(t1, t2).amin(dim=1)  # [N]
    near = near.clamp_min(min_near)
    miss = near > far
    near = torch.where(miss, torch.full_like(near, MISS), near)
    far = torch.where(miss, torch.full_like(far, MISS), far)
    return near, far


# ---------------------------------------------------------------------------------------------
# Occupancy grid
# ---------------------------------------------------------------------------------------------


def _expand_bits(v: torch.Tensor) -> torch.Tensor:
    v = v.to(torch.int64) & 0x3FF
    v = (v * 0x00010001) & 0xFF0000FF
    v = (v * 0x00000101) & 0x0F00F00F
    v = (v * 0x00000011) & 0xC30C30C3
    v = (v * 0x00000005) & 0x49249249
    return v


def _compact_bits(v: torch.Tensor) -> torch.Tensor:
    v = v & 0x49249249
    v = (v | (v >> 2)) & 0xC30C30C3
    v = (v | (v >> 4)) & 0x0F00F00F
    v = (v | (v >> 8)) & 0xFF0000FF
    v = (v | (v >> 16)) & 0x0000FFFF
    return v


def morton3D(coords: torch.Tensor) -> torch.Tensor:
    """int [N, 3] (each < 1024) -> int32 [N]: x bits at 3k, y at 3k+1, z at 3k+2."""
    c = coords.to(torch.int64)
    idx = _expand_bits(c[:, 0]) | (_expand_bits(c[:, 1]) << 1) | (_expand_bits(c[:, 2]) << 2)
    return idx.to(torch.int32)


def morton3D_invert(idx: torch.Tensor) -> torch.Tensor:
    """int32 [N] -> int32 [N, 3], the inverse of morton3D."""
    i = idx.to(torch.int64)
    return torch.stack([_compact_bits(i), _compact_bits(i >> 1), _compact_bits(i >> 2)], dim=1).to(
        torch.int32
    )


def packbits(density_grid: torch.Tensor, thresh: float) -> torch.Tensor:
    """[C, G^3] float -> uint8 [C*G^3/8]; bit j of byte i = (flat[8i + j] > thresh)."""
    occ = (density_grid.reshape(-1, 8) > thresh).to(torch.uint8)  # [C*G^3/8, 8]
    weights = (2 ** torch.arange(8, device=occ.device)).to(torch.uint8)
    return (occ * weights).sum(dim=1).to(torch.uint8)


# ---------------------------------------------------------------------------------------------
# Ray marching (same branch structure as march_step() in march_math.h, vectorised over rays)
# ---------------------------------------------------------------------------------------------


def _step_size(t: torch.Tensor, spec: MarchSpec) -> torch.Tensor:
    return (t * spec.dt_gamma).clamp(spec.dt_min, spec.dt_max)


def _level_from(m: torch.Tensor, cascades: int) -> torch.Tensor:
    """Number of k in [0, C-2] with m >= 2**k: the cascade whose box (or cell) first holds m."""
    level = torch.zeros_like(m, dtype=torch.int64)
    for k in range(cascades - 1):
        level += (m >= float(2**k)).to(torch.int64)
    return level


class _Consts:
    """The spec's constants as tensors on the device of the rays."""

    def __init__(self, spec: MarchSpec, like: torch.Tensor) -> None:
        def t(v):
            return torch.tensor(v, dtype=like.dtype, device=like.device)

        self.lo_box, self.hi_box = t(spec.aabb[:3]), t(spec.aabb[3:])
        self.center, self.inv_half0 = t(spec.center), t(spec.inv_half0)
        self.lo, self.cell, self.inv_cell = t(spec.lo), t(spec.cell), t(spec.inv_cell)  # [C, 3]


def _march(
    o: torch.Tensor,  # [R, 3]
    d: torch.Tensor,  # [R, 3]
    t: torch.Tensor,  # [R] start
    far: torch.Tensor,  # [R]
    bitfield: torch.Tensor,  # uint8 [C*G^3/8]
    spec: MarchSpec,
    max_count: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """March every ray from t until far or max_count occupied samples.

    Returns (ray [S], k [S], xyz [S, 3], t [S], dt [S], t_end [R]) for all samples S in any order;
    k is the sample's index along its ray.
    """
    cs = _Consts(spec, o)
    G, C = spec.grid_size, spec.cascades
    rd = safe_rcp(d)
    count = torch.zeros(o.shape[0], dtype=torch.int64, device=o.device)
    t = t.clone()
    out: list[tuple[torch.Tensor, ...]] = []
    act = torch.nonzero((t < far) & (count < max_count)).squeeze(1)
    while act.numel():
        ta, oa, da = t[act], o[act], d[act]
        x = torch.minimum(torch.maximum(oa + ta[:, None] * da, cs.lo_box), cs.hi_box)  # [A, 3]
        dt = _step_size(ta, spec)
        m_pos = ((x - cs.center).abs() * cs.inv_half0).amax(dim=1)
        level = torch.maximum(_level_from(m_pos, C), _level_from(dt * spec.inv_cell0, C))
        lo, inv_cell = cs.lo[level], cs.inv_cell[level]  # [A, 3]
        n = ((x - lo) * inv_cell).to(torch.int64).clamp(0, G - 1)  # [A, 3]
        index = level * G**3 + morton3D(n).to(torch.int64)
        occ = ((bitfield[index // 8].to(torch.int64) >> (index % 8)) & 1).bool()
        # occupied: emit a sample and step by dt
        hit = act[occ]
        out.append((hit, count[hit], x[occ], ta[occ], dt[occ]))
        count[hit] += 1
        t[hit] = ta[occ] + dt[occ]
        # empty: jump to the cell's exit, then round up to the step grid
        miss = ~occ
        if miss.any():
            rays = act[miss]
            xm, nm, lvl = x[miss], n[miss], level[miss]
            side = (da[miss] >= 0).to(x.dtype)
            bound = cs.lo[lvl] + (nm.to(x.dtype) + side) * cs.cell[lvl]
            tx = ((bound - xm) * rd[rays]).amin(dim=1)
            target = ta[miss] + tx.clamp_min(0.0)
            tm = ta[miss]
            todo = torch.ones_like(tm, dtype=torch.bool)
            while todo.any():
                tm = torch.where(todo, tm + _step_size(tm, spec), tm)
                todo = tm < target
            t[rays] = tm
        act = act[(t[act] < far[act]) & (count[act] < max_count)]
    if out:
        ray, k, xyz, ts, dts = (torch.cat(parts) for parts in zip(*out, strict=True))
    else:
        ray = k = torch.zeros(0, dtype=torch.int64, device=o.device)
        xyz = o.new_zeros(0, 3)
        ts = dts = o.new_zeros(0)
    return ray, k, xyz, ts, dts, t


def _perturbed_start(t: torch.Tensor, noise: torch.Tensor | None, spec: MarchSpec) -> torch.Tensor:
    if noise is None:
        return t
    return t + _step_size(t, spec) * noise


def march_rays_train(
    rays_o: torch.Tensor,
    rays_d: torch.Tensor,
    bitfield: torch.Tensor,
    nears: torch.Tensor,
    fars: torch.Tensor,
    spec: MarchSpec,
    noise: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> xyzs [M, 3], dirs [M, 3], ts [M, 2] (t, dt), rays int32 [N, 2] (offset, count), ray-major."""
    n_rays = rays_o.shape[0]
    t0 = _perturbed_start(nears, noise, spec)
    ray, k, xyz, ts, dts, _ = _march(rays_o, rays_d, t0, fars, bitfield, spec, spec.max_samples)
    counts = torch.bincount(ray, minlength=n_rays)  # [N]
    offsets = torch.cumsum(counts, 0) - counts
    pos = offsets[ray] + k
    m = int(counts.sum())
    xyzs = rays_o.new_zeros(m, 3)
    dirs = rays_o.new_zeros(m, 3)
    tsa = rays_o.new_zeros(m, 2)
    xyzs[pos] = xyz
    dirs[pos] = rays_d[ray]
    tsa[pos] = torch.stack([ts, dts], dim=1)
    rays = torch.stack([offsets, counts], dim=1).to(torch.int32)
    return xyzs, dirs, tsa, rays


def march_rays(
    n_alive: int,
    n_step: int,
    rays_alive: torch.Tensor,
    rays_t: torch.Tensor,
    rays_o: torch.Tensor,
    rays_d: torch.Tensor,
    fars: torch.Tensor,
    bitfield: torch.Tensor,
    spec: MarchSpec,
    noise: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Up to n_step samples for each of the first n_alive alive rays, from rays_t on.

    -> xyzs [n_alive*n_step, 3], dirs [.., 3], ts [.., 2]; unused slots are zero (dt = 0 ends a ray).
    """
    slots = torch.arange(n_alive, device=rays_o.device)
    ids = rays_alive[:n_alive].to(torch.int64)
    live = ids >= 0
    slots, ids = slots[live], ids[live]
    t0 = _perturbed_start(rays_t[:n_alive][live], None if noise is None else noise[:n_alive][live], spec)
    ray, k, xyz, ts, dts, _ = _march(rays_o[ids], rays_d[ids], t0, fars[ids], bitfield, spec, n_step)
    pos = slots[ray] * n_step + k
    xyzs = rays_o.new_zeros(n_alive * n_step, 3)
    dirs = rays_o.new_zeros(n_alive * n_step, 3)
    tsa = rays_o.new_zeros(n_alive * n_step, 2)
    xyzs[pos] = xyz
    dirs[pos] = rays_d[ids[ray]]
    tsa[pos] = torch.stack([ts, dts], dim=1)
    return xyzs, dirs, tsa


# ---------------------------------------------------------------------------------------------
# Compositing
# ---------------------------------------------------------------------------------------------


def _ray_matrix(rays: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """rays [N, 2] (offset, count) -> sample index [N, K] (0 where padded) and mask [N, K]."""
    offsets, counts = rays[:, 0].to(torch.int64), rays[:, 1].to(torch.int64)
    k = int(counts.max()) if counts.numel() else 0
    ar = torch.arange(k, device=rays.device)
    mask = ar[None, :] < counts[:, None]
    idx = torch.where(mask, offsets[:, None] + ar[None, :], torch.zeros_like(mask, dtype=torch.int64))
    return idx, mask


def composite_rays_train(
    sigmas: torch.Tensor,  # [M]
    rgbs: torch.Tensor,  # [M, 3]
    ts: torch.Tensor,  # [M, 2]
    rays: torch.Tensor,  # [N, 2]
    extras: torch.Tensor | None,  # [M, E]
    T_thresh: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Front-to-back alpha compositing; a ray stops after the sample where transmittance drops below T_thresh.

    -> weights [M], weights_sum [N], depth [N] (sum of w * t, not normalised), image [N, 3],
    extras_sum [N, E] (E = 0 when extras is None).
    """
    n_rays = rays.shape[0]
    if extras is None:
        extras = sigmas.new_zeros(sigmas.shape[0], 0)
    idx, mask = _ray_matrix(rays)  # [N, K]
    maskf = mask.to(sigmas.dtype)
    sd = sigmas[idx] * ts[idx, 1] * maskf  # [N, K] optical depth of each sample
    tau_excl = torch.cumsum(sd, dim=1) - sd
    trans = torch.exp(-tau_excl)  # [N, K] transmittance before each sample
    # a sample counts when the ray is still alive before it (the first always is)
    alive = mask & ((trans >= T_thresh) | (torch.arange(idx.shape[1], device=idx.device) == 0))
    w = (1 - torch.exp(-sd)) * trans * alive.to(sigmas.dtype)  # [N, K]
    weights_sum = w.sum(dim=1)
    depth = (w * ts[idx, 0]).sum(dim=1)
    image = (w[..., None] * rgbs[idx]).sum(dim=1)
    extras_sum = (w[..., None] * extras[idx]).sum(dim=1)
    weights = sigmas.new_zeros(sigmas.shape[0]).index_put((idx[mask],), w[mask])
    if n_rays == 0:
        weights_sum = sigmas.new_zeros(0)
        depth = sigmas.new_zeros(0)
        image = sigmas.new_zeros(0, 3)
        extras_sum = sigmas.new_zeros(0, extras.shape[1])
    return weights, weights_sum, depth, image, extras_sum


@torch.no_grad()
def composite_rays(
    n_alive: int,
    n_step: int,
    rays_alive: torch.Tensor,  # int32 [n] (updated: dead rays -> -1)
    rays_t: torch.Tensor,  # [n] (updated: where the next march starts)
    sigmas: torch.Tensor,  # [n_alive*n_step]
    rgbs: torch.Tensor,  # [n_alive*n_step, 3]
    ts: torch.Tensor,  # [n_alive*n_step, 2]
    weights_sum: torch.Tensor,  # [N] (accumulated in place)
    depth: torch.Tensor,  # [N]
    image: torch.Tensor,  # [N, 3]
    extras: torch.Tensor | None,  # [n_alive*n_step, E]
    extras_sum: torch.Tensor | None,  # [N, E]
    T_thresh: float,
) -> None:
    """Inference compositing of one march round into per-ray accumulators, in place."""
    if n_alive == 0:
        return
    ids = rays_alive[:n_alive].to(torch.int64)
    live = ids >= 0
    slot = torch.nonzero(live).squeeze(1)
    ray = ids[live]
    sig = sigmas.reshape(n_alive, n_step)[slot]
    tt = ts.reshape(n_alive, n_step, 2)[slot]
    dt = tt[..., 1]
    col = rgbs.reshape(n_alive, n_step, 3)[slot]
    e = torch.exp(-(sig * dt))  # [A, S]
    alpha = 1 - e
    t_start = 1 - weights_sum[ray]  # [A]
    trans_after = torch.cumprod(torch.cat([t_start[:, None], e], dim=1), dim=1)  # [A, S+1]
    trans = trans_after[:, :-1]
    stop = (dt == 0) | (trans_after[:, 1:] < T_thresh)  # [A, S]
    stopped_before = torch.cumsum(stop.to(torch.int64), dim=1) - stop.to(torch.int64) > 0
    valid = (dt != 0) & ~stopped_before
    w = alpha * trans * valid.to(sig.dtype)
    weights_sum.index_put_((ray,), w.sum(dim=1), accumulate=True)
    depth.index_put_((ray,), (w * tt[..., 0]).sum(dim=1), accumulate=True)
    image.index_put_((ray,), (w[..., None] * col).sum(dim=1), accumulate=True)
    if extras is not None and extras_sum is not None:
        ex = extras.reshape(n_alive, n_step, -1)[slot]
        extras_sum.index_put_((ray,), (w[..., None] * ex).sum(dim=1), accumulate=True)
    dead = stop.any(dim=1)
    rays_alive[slot[dead]] = -1
    keep = slot[~dead]
    rays_t[keep] = tt[~dead, -1, 0] + tt[~dead, -1, 1]


# ---------------------------------------------------------------------------------------------
# Multi-resolution hash grid
# ---------------------------------------------------------------------------------------------


def grid_index(corner: torch.Tensor, spec: GridSpec, level: int) -> torch.Tensor:
    """int64 [..., D] lattice corner -> row within the level (dense where it fits, else hashed)."""
    v = spec.verts[level]
    rows = spec.offsets[level + 1] - spec.offsets[level]
    if v**spec.input_dim <= rows:
        idx = corner[..., 0].clone()
        stride = 1
        for dim in range(1, spec.input_dim):
            stride *= v
            idx = idx + corner[..., dim] * stride
    else:
        idx = corner[..., 0] * PRIMES[0]
        for dim in range(1, spec.input_dim):
            idx = idx ^ (corner[..., dim] * PRIMES[dim])
        idx = idx & 0xFFFFFFFF
    return idx % rows


def hash_encode(x: torch.Tensor, embeddings: torch.Tensor, spec: GridSpec) -> torch.Tensor:
    """x [N, D] in [0, 1], embeddings [rows, C] -> [N, L*C] (level-major), in the table's dtype.

    Per level: multilinear interpolation of the 2**D lattice corners around x * scale + shift.
    Differentiable w.r.t. embeddings and x (floor has zero gradient, as in the kernels).
    """
    n, dim = x.shape
    feats = []
    cdtype = torch.promote_types(x.dtype, torch.float32)
    for lvl in range(spec.num_levels):
        pos = x.to(cdtype) * spec.scales[lvl] + spec.shift  # [N, D]
        base = torch.floor(pos)
        frac = pos - base
        base = base.to(torch.int64)
        acc = 0
        for corner in range(2**dim):
            bits = [(corner >> k) & 1 for k in range(dim)]
            offs = torch.tensor(bits, device=x.device, dtype=torch.int64)
            w = torch.ones(n, dtype=cdtype, device=x.device)
            for k in range(dim):
                w = w * (frac[:, k] if bits[k] else 1 - frac[:, k])
            row = spec.offsets[lvl] + grid_index(base + offs, spec, lvl)  # [N]
            acc = acc + w[:, None] * embeddings[row].to(cdtype)
        feats.append(acc)
    if not feats:
        return x.new_zeros(n, 0)
    return torch.cat(feats, dim=1).to(embeddings.dtype)
