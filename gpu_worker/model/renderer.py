"""Volume rendering of the head: occupancy grid and ray marching through cuda_ext.

The grid holds, per cell, the largest density seen lately (decayed at each update) for a few
training frames' audio and expression, since the mouth's volume moves with them. Marching skips
cells under the threshold, so only ~16 samples per ray are evaluated in training.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from gpu_worker.model import kernels
from gpu_worker.model.config import RendererConfig


class OccupancyGrid(nn.Module):
    def __init__(self, config: RendererConfig, aabb: torch.Tensor) -> None:
        super().__init__()
        self.config = config
        g = config.grid_size
        self.register_buffer("aabb", aabb.clone().float())
        self.register_buffer(
            "density", torch.full((1, g**3), -1.0)
        )  # -1: never updated (treated as occupied)
        self.register_buffer("bitfield", torch.full((g**3 // 8,), 255, dtype=torch.uint8))
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    def cell_centres(self, cells: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """World points [C, 3] of some cells [C] (Morton indices), jittered inside each cell."""
        pos = kernels.grid_cell_positions(
            self.aabb, self.config.grid_size, jitter=True, generator=generator, device="cpu"
        )  # [G^3, 3]
        return pos[cells.cpu()].to(self.density.device)

    @torch.no_grad()
    def update(
        self,
        density_fn: Callable[[torch.Tensor], torch.Tensor],
        generator: torch.Generator,
        chunk: int | None = None,
    ) -> None:
        """Refresh the densities (all cells during warm-up, a quarter afterwards) and repack the bitfield.

        ``chunk``: points per density_fn call; 16384 on the CPU, where a 65536-point chunk's [65536, 87]
        activations (22 MB) go back to the OS at every free and are page-faulted in again at every
        allocation (measured: 110-131 ms per 65536 points in 65536-point chunks, 56 ms in 16384-point
        ones, the same densities); 65536 on CUDA, where fewer calls mean fewer kernel launches."""
        chunk = chunk or (65536 if self.density.device.type == "cuda" else 16384)
        n = self.density.shape[1]
        if int(self.updates) < self.config.grid_warmup_steps // max(self.config.update_every, 1):
            cells = torch.arange(n)
        else:
            cells = torch.randperm(n, generator=generator)[: n // 4]
        pos = self.cell_centres(cells, generator)  # [C, 3]
        cells = cells.to(self.density.device)
        new = torch.empty(cells.shape[0], device=self.density.device)
        for s in range(0, cells.shape[0], chunk):
            new[s : s + chunk] = density_fn(pos[s : s + chunk])
        # a cell's density per unit length becomes a per-cell opacity scale through the step size
        old = self.density[0]
        decayed = torch.where(old < 0, old, old * self.config.grid_decay)
        decayed[cells] = torch.maximum(decayed[cells], new)
        self.density[0] = decayed
        self.updates += 1
        valid = decayed[decayed >= 0]
        mean = float(valid.mean()) if valid.numel() else 0.0
        grid = torch.where(decayed < 0, torch.full_like(decayed, float("inf")), decayed)
        self.bitfield.copy_(kernels.packbits(grid[None], min(mean, self.config.density_thresh)))

    def occupancy(self) -> float:
        bits = torch.unpackbits if hasattr(torch, "unpackbits") else None
        if bits is not None:
            return float(bits(self.bitfield).float().mean())
        b = self.bitfield.long()
        return float(sum(((b >> k) & 1).sum() for k in range(8))) / (b.numel() * 8)


def render_head_rays(
    field_fn: Callable[[torch.Tensor, torch.Tensor], dict[str, torch.Tensor]],
    grid: OccupancyGrid,
    rays_o: torch.Tensor,
    rays_d: torch.Tensor,
    *,
    perturb: bool,
    generator: torch.Generator | None,
    max_samples: int,
    group: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """March and composite K rays [K, 3] through the field. Returns image (premultiplied) [K, 3],
    alpha [K], depth [K], unc [K] (composited uncertainty), attn_a / attn_e [K] (mean attention).

    ``group`` [K] int64 (rays of several frames): ``field_fn(xyz, dirs, g)`` then also gets each
    sample's group [M]."""
    cfg = grid.config
    nears, fars = kernels.near_far_from_aabb(rays_o, rays_d, grid.aabb, cfg.min_near)
    xyzs, dirs, ts, rays = kernels.march_rays_train(
        rays_o,
        rays_d,
        grid.aabb,
        grid.bitfield,
        nears,
        fars,
        grid_size=cfg.grid_size,
        cascades=1,
        dt_gamma=cfg.dt_gamma,
        max_steps=cfg.max_steps,
        max_samples_per_ray=max_samples,
        perturb=perturb,
        generator=generator,
    )
    k = rays_o.shape[0]
    if xyzs.shape[0] == 0:
        z = rays_o.new_zeros(k)
        return {
            "image": rays_o.new_zeros(k, 3),
            "alpha": z,
            "depth": z,
            "unc": z,
            "attn_a": z,
            "attn_e": z,
            "samples": 0,
        }
    if group is None:
        out = field_fn(xyzs, dirs)
    else:
        out = field_fn(xyzs, dirs, group[sample_rays(rays, xyzs.shape[0])])
    extras = torch.stack([out["unc"], out["a_attn"].mean(-1), out["e_attn"].mean(-1)], -1)  # [M, 3]
    _, alpha, depth, image, extras_sum = kernels.composite_rays_train(
        out["sigma"].float(), out["rgb"].float(), ts, rays, extras.float(), T_thresh=cfg.T_thresh
    )
    return {
        "image": image,
        "alpha": alpha,
        "depth": depth,
        "unc": extras_sum[:, 0],
        "attn_a": extras_sum[:, 1],
        "attn_e": extras_sum[:, 2],
        "samples": int(xyzs.shape[0]),
    }


def sample_rays(rays: torch.Tensor, n_samples: int) -> torch.Tensor:
    """The ray of each training sample [M] from the marcher's (offset, count) per ray [K, 2]. Rays'
    sample ranges are disjoint and cover 0..M, but not necessarily in ray order (GPU atomics)."""
    offsets, counts = rays[:, 0].long(), rays[:, 1].long()
    order = torch.argsort(offsets)
    out = torch.repeat_interleave(order, counts[order])
    if out.shape[0] != n_samples:  # rays whose samples were cut off at the sample budget
        raise RuntimeError(f"marcher returned {n_samples} samples but its rays count {out.shape[0]}")
    return out


InferFieldFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], dict[str, torch.Tensor]]
"""(xyz [M, 3], dirs [M, 3], group [M] int64: which frame's conditions each point uses) -> sigma, rgb."""


@torch.inference_mode()
def render_head_rays_infer(
    field_fn: InferFieldFn,
    grid: OccupancyGrid,
    rays_o: torch.Tensor,
    rays_d: torch.Tensor,
    group: torch.Tensor | None = None,
    *,
    max_rounds: int = 64,
) -> dict[str, torch.Tensor]:
    """Inference marching (torch-ngp style) of K rays [K, 3], possibly of several frames at once
    (``group`` [K] int64: the frame of each ray; None = one frame).

    Each round marches every alive ray n_step = clamp(K // n_alive, 1, 8) occupied samples, so the
    late rounds (few rays left, e.g. in the hair or the semi-transparent edge) take more samples
    per ray and the round count stays small; rays that left the box or became opaque
    (T < T_thresh) are dropped between rounds. Only the filled sample slots reach the field (a ray
    that exits mid-round leaves empty slots). After ``max_rounds`` the rays still alive keep what
    they have composited (their transmittance is then already small: rounds late in the loop are
    8 samples deep). Returns image (premultiplied) [K, 3], alpha [K], depth [K]."""
    cfg = grid.config
    k = rays_o.shape[0]
    dev = rays_o.device
    nears, fars = kernels.near_far_from_aabb(rays_o, rays_d, grid.aabb, cfg.min_near)
    weights_sum = torch.zeros(k, device=dev)
    depth = torch.zeros(k, device=dev)
    image = torch.zeros(k, 3, device=dev)
    hit = torch.nonzero(nears < fars).flatten()
    if hit.numel() == 0:
        return {"image": image, "alpha": weights_sum, "depth": depth}
    # march only the rays that meet the box; their accumulators are scattered back at the end
    o, d = rays_o[hit].contiguous(), rays_d[hit].contiguous()
    grp = (group[hit] if group is not None else torch.zeros(hit.numel(), dtype=torch.long, device=dev)).long()
    n = hit.numel()
    acc_w, acc_d, acc_i = (
        torch.zeros(n, device=dev),
        torch.zeros(n, device=dev),
        torch.zeros(n, 3, device=dev),
    )
    alive = torch.arange(n, dtype=torch.int32, device=dev)
    rays_t = nears[hit].contiguous()
    far = fars[hit].contiguous()
    step, rounds = 0, 0
    while step < cfg.max_steps and rounds < max_rounds:
        n_alive = alive.numel()  # the one host sync of a round (the compaction below sets it)
        if n_alive == 0:
            break
        n_step = max(min(n // n_alive, 8), 1)
        xyzs, dirs, ts = kernels.march_rays(
            n_alive, n_step, alive, rays_t, o, d, grid.aabb, grid.bitfield,
            grid_size=cfg.grid_size, cascades=1, dt_gamma=cfg.dt_gamma, max_steps=cfg.max_steps, fars=far,
        )  # fmt: skip  # xyzs, dirs [n_alive * n_step, 3], ts [.., 2]
        # empty slots (dt = 0) get sigma 0 without a field evaluation
        slots = torch.nonzero(ts[:, 1] > 0).flatten()  # [S]
        sigma = torch.zeros(n_alive * n_step, device=dev)
        rgb = torch.zeros(n_alive * n_step, 3, device=dev)
        if slots.numel():
            ray_of_slot = alive.long()[slots // n_step]  # [S]
            out = field_fn(xyzs[slots], dirs[slots], grp[ray_of_slot])
            sigma[slots], rgb[slots] = out["sigma"].float(), out["rgb"].float()
        kernels.composite_rays(
            n_alive, n_step, alive, rays_t, sigma, rgb, ts, acc_w, acc_d, acc_i, T_thresh=cfg.T_thresh,
        )  # fmt: skip
        keep = alive >= 0
        alive, rays_t = alive[keep].contiguous(), rays_t[keep].contiguous()
        step += n_step
        rounds += 1
    weights_sum[hit], depth[hit], image[hit] = acc_w, acc_d, acc_i
    return {"image": image, "alpha": weights_sum, "depth": depth}
