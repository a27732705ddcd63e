"""Public ray-marching ops (torch-ngp API shape): near/far, occupancy grid, march, composite.

Thin wrappers: check inputs, pick the backend (see backend.py), hand float32-exact constants
(geometry.py) to the kernel. All float tensors are float32 and all on one device.
"""

from __future__ import annotations

import torch

from . import reference as ref
from .backend import check, extension_for
from .errors import KernelInputError
from .geometry import aabb_values, make_march_spec

F32 = torch.float32
INT = (torch.int32, torch.int64)


def near_far_from_aabb(
    rays_o: torch.Tensor, rays_d: torch.Tensor, aabb: torch.Tensor, min_near: float = 0.05
) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each ray enters and leaves the box.

    rays_o, rays_d: [N, 3]; aabb: [6] (xmin, ymin, zmin, xmax, ymax, zmax) tensor or sequence.
    Returns nears [N], fars [N]; nears are at least min_near; rays that miss the box (or meet it only
    before min_near) get nears = fars = 1e10.
    """
    dev = rays_o.device
    rays_o = check(rays_o, "rays_o", dtype=F32, shape=(None, 3))
    rays_d = check(rays_d, "rays_d", dtype=F32, shape=(rays_o.shape[0], 3), device=dev)
    box = aabb_values(aabb)
    ext = extension_for(dev)
    if ext is None:
        return ref.near_far_from_aabb(rays_o, rays_d, box, float(min_near))
    return tuple(ext.near_far_from_aabb(rays_o, rays_d, torch.tensor(box, dtype=F32), float(min_near)))


def morton3D(coords: torch.Tensor) -> torch.Tensor:
    """int [N, 3] grid coordinates (each in [0, 1024)) -> int32 [N] Morton (Z-order) index."""
    coords = check(coords, "coords", dtype=INT, shape=(None, 3)).to(torch.int32)
    ext = extension_for(coords.device)
    return ref.morton3D(coords) if ext is None else ext.morton3D(coords)


def morton3D_invert(idx: torch.Tensor) -> torch.Tensor:
    """int32 [N] Morton index -> int32 [N, 3] grid coordinates."""
    idx = check(idx, "idx", dtype=INT, shape=(None,)).to(torch.int32)
    ext = extension_for(idx.device)
    return ref.morton3D_invert(idx) if ext is None else ext.morton3D_invert(idx)


def packbits(density_grid: torch.Tensor, thresh: float) -> torch.Tensor:
    """density_grid [C, G^3] float32 (Morton order within a cascade) -> bitfield uint8 [C*G^3/8].

    Bit j of byte i is set where density_grid.flatten()[8*i + j] > thresh.
    """
    grid = check(density_grid, "density_grid", dtype=F32)
    if grid.dim() != 2 or grid.numel() % 8:
        raise KernelInputError(
            f"density_grid must be [C, G^3] with G^3 a multiple of 8, got {list(grid.shape)}"
        )
    ext = extension_for(grid.device)
    return ref.packbits(grid, float(thresh)) if ext is None else ext.packbits(grid, float(thresh))


@torch.no_grad()
def update_density_grid(grid: torch.Tensor, new_values: torch.Tensor, decay: float = 0.95) -> torch.Tensor:
    """In place: grid = max(grid * decay, new_values) where grid >= 0 (cells marked < 0 stay unused).

    grid, new_values: [C, G^3]. Returns grid.
    """
    if grid.shape != new_values.shape:
        raise KernelInputError(f"new_values shape {list(new_values.shape)} != grid shape {list(grid.shape)}")
    valid = grid >= 0
    grid[valid] = torch.maximum(grid[valid] * decay, new_values[valid].to(grid.dtype))
    return grid


def grid_cell_positions(
    aabb: torch.Tensor,
    grid_size: int = 128,
    cascade: int = 0,
    cascades: int = 1,
    *,
    jitter: bool = False,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """World positions [G^3, 3] of the cells of one cascade, in Morton order (the density grid's order).

    Cell centres, or with jitter a uniform point inside each cell: what a density-grid update
    evaluates the model at. Cascade c spans the aabb scaled by 2**(c - (cascades - 1)) about its centre.
    """
    spec = make_march_spec(aabb, grid_size, cascades, 0.0, 1, 1)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    idx = torch.arange(grid_size**3, dtype=torch.int32, device=dev)
    cells = ref.morton3D_invert(idx).to(F32)  # [G^3, 3]
    frac = torch.rand(cells.shape, generator=generator, device=dev) if jitter else torch.full_like(cells, 0.5)
    lo = torch.tensor(spec.lo[cascade], dtype=F32, device=dev)
    cell = torch.tensor(spec.cell[cascade], dtype=F32, device=dev)
    return lo + (cells + frac) * cell


def _rays_inputs(rays_o, rays_d, bitfield, spec, n: int | None = None):
    dev = rays_o.device
    rays_o = check(rays_o, "rays_o", dtype=F32, shape=(n, 3))
    rays_d = check(rays_d, "rays_d", dtype=F32, shape=(rays_o.shape[0], 3), device=dev)
    cells = spec.cascades * spec.grid_size**3 // 8
    bitfield = check(bitfield, "bitfield", dtype=torch.uint8, shape=(cells,), device=dev)
    return rays_o, rays_d, bitfield


def _noise(n: int, perturb: bool, generator, device) -> torch.Tensor | None:
    if not perturb:
        return None
    return torch.rand(n, generator=generator, device=device, dtype=F32)


def march_rays_train(
    rays_o: torch.Tensor,
    rays_d: torch.Tensor,
    aabb: torch.Tensor,
    bitfield: torch.Tensor,
    nears: torch.Tensor,
    fars: torch.Tensor,
    *,
    grid_size: int = 128,
    cascades: int = 1,
    dt_gamma: float = 1 / 256,
    max_steps: int = 1024,
    max_samples_per_ray: int = 16,
    perturb: bool = False,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Samples of every ray in occupied cells only.

    rays_o, rays_d [N, 3]; aabb [6]: the box the occupancy grid spans (outermost cascade);
    bitfield uint8 [cascades*G^3/8] from packbits; nears, fars [N] (from near_far_from_aabb).
    Step: dt = clamp(t * dt_gamma, diag0 / max_steps, diag / grid_size) (torch-ngp's cone tracing);
    empty cells are skipped; a ray stops at far or after min(max_samples_per_ray, max_steps) samples.
    perturb: each ray starts at near + U[0,1) * dt (drawn from `generator`).
    Returns xyzs [M, 3] (clamped into the aabb), dirs [M, 3], ts [M, 2] (t, dt) and
    rays int32 [N, 2] (offset into M, count); samples are stored ray after ray, near to far.
    """
    spec = make_march_spec(aabb, grid_size, cascades, dt_gamma, max_steps, max_samples_per_ray)
    rays_o, rays_d, bitfield = _rays_inputs(rays_o, rays_d, bitfield, spec)
    n = rays_o.shape[0]
    nears = check(nears, "nears", dtype=F32, shape=(n,), device=rays_o.device)
    fars = check(fars, "fars", dtype=F32, shape=(n,), device=rays_o.device)
    noise = _noise(n, perturb, generator, rays_o.device)
    ext = extension_for(rays_o.device)
    if ext is None:
        return ref.march_rays_train(rays_o, rays_d, bitfield, nears, fars, spec, noise)
    empty = torch.empty(0, dtype=F32, device=rays_o.device)
    out = ext.march_rays_train(
        rays_o, rays_d, bitfield, nears, fars, empty if noise is None else noise, spec.packed(),
        spec.grid_size, spec.cascades, spec.max_samples,
    )  # fmt: skip
    return tuple(out)


def march_rays(
    n_alive: int,
    n_step: int,
    rays_alive: torch.Tensor,
    rays_t: torch.Tensor,
    rays_o: torch.Tensor,
    rays_d: torch.Tensor,
    aabb: torch.Tensor,
    bitfield: torch.Tensor,
    *,
    grid_size: int = 128,
    cascades: int = 1,
    dt_gamma: float = 1 / 256,
    max_steps: int = 1024,
    perturb: bool = False,
    generator: torch.Generator | None = None,
    fars: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One inference round: up to n_step occupied samples for each of the first n_alive rays.

    rays_alive int32 [n] (ray ids, -1 = dead), rays_t [n] (where each ray resumes; start with nears);
    rays_o, rays_d [N, 3]; fars [N] (default: exits of the aabb). Same step rule as march_rays_train.
    Returns xyzs [n_alive*n_step, 3], dirs [.., 3], ts [.., 2] (t, dt); slot n*n_step + k is the k-th
    sample of alive ray n; unused slots are zero (dt = 0 tells composite_rays the ray ended).
    """
    spec = make_march_spec(aabb, grid_size, cascades, dt_gamma, max_steps, 1)
    rays_o, rays_d, bitfield = _rays_inputs(rays_o, rays_d, bitfield, spec)
    dev = rays_o.device
    rays_alive = check(rays_alive, "rays_alive", dtype=torch.int32, shape=(None,), device=dev)
    rays_t = check(rays_t, "rays_t", dtype=F32, shape=(rays_alive.shape[0],), device=dev)
    n_alive, n_step = int(n_alive), int(n_step)
    if not 0 <= n_alive <= rays_alive.shape[0] or n_step < 1:
        raise KernelInputError(f"need 0 <= n_alive <= {rays_alive.shape[0]} and n_step >= 1")
    if fars is None:
        _, fars = near_far_from_aabb(rays_o, rays_d, torch.tensor(spec.aabb), 0.0)
    fars = check(fars, "fars", dtype=F32, shape=(rays_o.shape[0],), device=dev)
    noise = _noise(n_alive, perturb, generator, dev)
    ext = extension_for(dev)
    if ext is None:
        return ref.march_rays(
            n_alive, n_step, rays_alive, rays_t, rays_o, rays_d, fars, bitfield, spec, noise
        )
    empty = torch.empty(0, dtype=F32, device=dev)
    out = ext.march_rays(
        n_alive, n_step, rays_alive, rays_t, rays_o, rays_d, fars, bitfield,
        empty if noise is None else noise, spec.packed(), spec.grid_size, spec.cascades,
    )  # fmt: skip
    return tuple(out)


def _composite_inputs(sigmas, rgbs, ts, extras, m: int | None = None):
    dev = sigmas.device
    sigmas = check(sigmas, "sigmas", dtype=F32, shape=(m,))
    m = sigmas.shape[0]
    rgbs = check(rgbs, "rgbs", dtype=F32, shape=(m, 3), device=dev)
    ts = check(ts, "ts", dtype=F32, shape=(m, 2), device=dev)
    if extras is None:
        extras = sigmas.new_zeros(m, 0)
    extras = check(extras, "extras", dtype=F32, shape=(m, None), device=dev)
    return sigmas, rgbs, ts, extras


class _CompositeTrain(torch.autograd.Function):
    @staticmethod
    def forward(ctx, sigmas, rgbs, ts, rays, extras, T_thresh, ext):
        outs = ext.composite_rays_train_forward(sigmas, rgbs, ts, rays, extras, T_thresh)
        ctx.save_for_backward(sigmas, rgbs, ts, rays, extras)
        ctx.T_thresh, ctx.ext = T_thresh, ext
        return tuple(outs)

    @staticmethod
    def backward(ctx, g_weights, g_wsum, g_depth, g_image, g_extras):
        sigmas, rgbs, ts, rays, extras = ctx.saved_tensors
        grads = [g_weights, g_wsum, g_depth, g_image, g_extras]
        shapes = [sigmas, sigmas.new_empty(rays.shape[0]), None, None, None]
        shapes[2] = shapes[1]
        shapes[3] = sigmas.new_empty(rays.shape[0], 3)
        shapes[4] = sigmas.new_empty(rays.shape[0], extras.shape[1])
        grads = [
            torch.zeros_like(s) if g is None else g.contiguous() for g, s in zip(grads, shapes, strict=True)
        ]
        g_sig, g_rgb, g_ext = ctx.ext.composite_rays_train_backward(
            *grads, sigmas, rgbs, ts, rays, extras, ctx.T_thresh
        )
        return g_sig, g_rgb, None, None, g_ext, None, None


def composite_rays_train(
    sigmas: torch.Tensor,
    rgbs: torch.Tensor,
    ts: torch.Tensor,
    rays: torch.Tensor,
    extras: torch.Tensor | None = None,
    T_thresh: float = 1e-4,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Volume rendering of march_rays_train's samples, differentiable w.r.t. sigmas, rgbs and extras.

    sigmas [M] (densities), rgbs [M, 3], ts [M, 2] (t, dt), rays int32 [N, 2] (offset, count),
    extras [M, E] or None (per-sample channels summed with the same weights, e.g. attention
    magnitudes and uncertainty). alpha = 1 - exp(-sigma * dt); w = alpha * T; a ray stops after the
    sample that takes its transmittance T below T_thresh.
    Returns weights [M], weights_sum [N], depth [N] (sum of w * t, not divided by weights_sum),
    image [N, 3] (no background), extras_sum [N, E] (E = 0 when extras is None).
    """
    sigmas, rgbs, ts, extras = _composite_inputs(sigmas, rgbs, ts, extras)
    rays = check(rays, "rays", dtype=torch.int32, shape=(None, 2), device=sigmas.device)
    ext = extension_for(sigmas.device)
    if ext is None:
        return ref.composite_rays_train(sigmas, rgbs, ts, rays, extras, float(T_thresh))
    return _CompositeTrain.apply(sigmas, rgbs, ts, rays, extras, float(T_thresh), ext)


@torch.no_grad()
def composite_rays(
    n_alive: int,
    n_step: int,
    rays_alive: torch.Tensor,
    rays_t: torch.Tensor,
    sigmas: torch.Tensor,
    rgbs: torch.Tensor,
    ts: torch.Tensor,
    weights_sum: torch.Tensor,
    depth: torch.Tensor,
    image: torch.Tensor,
    extras: torch.Tensor | None = None,
    extras_sum: torch.Tensor | None = None,
    T_thresh: float = 1e-4,
) -> None:
    """Composite one march_rays round into the per-ray accumulators, in place.

    sigmas [n_alive*n_step], rgbs [.., 3], ts [.., 2], extras [.., E] | None; accumulators
    weights_sum [N], depth [N], image [N, 3], extras_sum [N, E] | None (the ray's transmittance is
    1 - weights_sum). A ray that ended (dt = 0 slot) or whose transmittance fell below T_thresh is
    marked -1 in rays_alive; the others get rays_t = t + dt of their last sample (where to resume).
    """
    dev = sigmas.device
    n_alive, n_step = int(n_alive), int(n_step)
    sigmas, rgbs, ts, ex = _composite_inputs(sigmas, rgbs, ts, extras, n_alive * n_step)
    for name, t in (("rays_alive", rays_alive), ("rays_t", rays_t), ("weights_sum", weights_sum)):
        if not t.is_contiguous():
            raise KernelInputError(f"{name} is updated in place and must be contiguous")
    for name, t in (("depth", depth), ("image", image)):
        if not t.is_contiguous():
            raise KernelInputError(f"{name} is updated in place and must be contiguous")
    check(rays_alive, "rays_alive", dtype=torch.int32, shape=(None,), device=dev)
    check(rays_t, "rays_t", dtype=F32, shape=(rays_alive.shape[0],), device=dev)
    check(weights_sum, "weights_sum", dtype=F32, shape=(None,), device=dev)
    n = weights_sum.shape[0]
    check(depth, "depth", dtype=F32, shape=(n,), device=dev)
    check(image, "image", dtype=F32, shape=(n, 3), device=dev)
    if (extras is None) != (extras_sum is None):
        raise KernelInputError("extras and extras_sum must be given together")
    if extras_sum is None:
        extras_sum = sigmas.new_zeros(n, 0)
    check(extras_sum, "extras_sum", dtype=F32, shape=(n, ex.shape[1]), device=dev)
    if not extras_sum.is_contiguous():
        raise KernelInputError("extras_sum is updated in place and must be contiguous")
    if n_alive > rays_alive.shape[0]:
        raise KernelInputError(f"n_alive {n_alive} > len(rays_alive) {rays_alive.shape[0]}")
    ext = extension_for(dev)
    if ext is None:
        ref.composite_rays(
            n_alive, n_step, rays_alive, rays_t, sigmas, rgbs, ts, weights_sum, depth, image,
            ex if extras is not None else None, extras_sum if extras is not None else None, float(T_thresh),
        )  # fmt: skip
        return
    ext.composite_rays(
        n_alive, n_step, rays_alive, rays_t, sigmas, rgbs, ts, weights_sum, depth, image, ex, extras_sum,
        float(T_thresh),
    )  # fmt: skip
