"""Host-side constants shared by every backend of the ray marcher.

The occupancy grid spans ``aabb`` (its outermost cascade); cascade ``c`` is the box scaled by
``2**(c - (C - 1))`` about the centre, so cascade 0 is the finest. Every derived constant is computed
here once, rounded to float32, and handed unchanged to the torch reference, the C++ kernels and the
CUDA kernels: that is what lets the three produce the same samples (a marcher branches on float
comparisons, so a constant rounded differently moves samples across cells).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .errors import KernelInputError

MAX_CASCADES = 8  # keep in sync with MAX_CASCADES in csrc/march_math.h
MAX_GRID_SIZE = 1024  # morton3D packs 10 bits per axis


def _f32(v: float) -> float:
    """Round a Python float to the nearest float32 (returned as a Python float, exactly representable)."""
    return float(np.float32(v))


@dataclass(frozen=True)
class MarchSpec:
    """Geometry of the occupancy grid plus the step rule, all float32-exact.

    ``packed()`` lays the floats out in the order csrc/march_math.h unpacks them.
    """

    grid_size: int
    cascades: int
    max_samples: int
    aabb: tuple[float, ...]  # (xmin, ymin, zmin, xmax, ymax, zmax)
    center: tuple[float, float, float]
    inv_half0: tuple[float, float, float]  # 1 / half extent of the finest cascade
    inv_cell0: float  # 1 / largest cell side of the finest cascade (level from step size)
    dt_gamma: float
    dt_min: float
    dt_max: float
    lo: tuple[tuple[float, float, float], ...]  # [C][3] lower corner per cascade
    cell: tuple[tuple[float, float, float], ...]  # [C][3] cell side per cascade
    inv_cell: tuple[tuple[float, float, float], ...]  # [C][3]

    def packed(self) -> torch.Tensor:
        vals = [*self.aabb, *self.center, *self.inv_half0, self.inv_cell0, self.dt_gamma, self.dt_min]
        vals += [self.dt_max]
        for c in range(self.cascades):
            vals += [*self.lo[c], *self.cell[c], *self.inv_cell[c]]
        return torch.tensor(vals, dtype=torch.float32)


def aabb_values(aabb: torch.Tensor | tuple | list) -> tuple[float, ...]:
    """The six box bounds as float32-exact Python floats (one host sync for a device tensor)."""
    vals = aabb.detach().flatten().tolist() if isinstance(aabb, torch.Tensor) else list(aabb)
    if len(vals) != 6:
        raise KernelInputError(
            f"aabb must have 6 values (xmin, ymin, zmin, xmax, ymax, zmax), got {len(vals)}"
        )
    vals = [_f32(v) for v in vals]
    if not all(vals[i + 3] > vals[i] for i in range(3)):
        raise KernelInputError(f"aabb must have max > min on every axis, got {vals}")
    return tuple(vals)


def make_march_spec(
    aabb: torch.Tensor | tuple | list,
    grid_size: int,
    cascades: int,
    dt_gamma: float,
    max_steps: int,
    max_samples: int,
) -> MarchSpec:
    """Constants of torch-ngp's cone-tracing step rule, generalised from its [-bound, bound] cube to a box.

    dt = clamp(t * dt_gamma, dt_min, dt_max) with dt_min = diagonal of the finest cascade / max_steps
    and dt_max = diagonal of the outermost cascade / grid_size (about one cell diagonal).
    """
    if grid_size < 2 or grid_size > MAX_GRID_SIZE or grid_size & (grid_size - 1):
        raise KernelInputError(f"grid_size must be a power of two in [2, {MAX_GRID_SIZE}], got {grid_size}")
    if not 1 <= cascades <= MAX_CASCADES:
        raise KernelInputError(f"cascades must be in [1, {MAX_CASCADES}], got {cascades}")
    if max_steps < 1 or max_samples < 1:
        raise KernelInputError("max_steps and max_samples_per_ray must be >= 1")
    if dt_gamma < 0:
        raise KernelInputError(f"dt_gamma must be >= 0, got {dt_gamma}")
    box = aabb_values(aabb)
    lo_out, hi_out = np.array(box[:3]), np.array(box[3:])
    center = (lo_out + hi_out) / 2
    half_out = (hi_out - lo_out) / 2
    lo, cell, inv_cell = [], [], []
    for c in range(cascades):
        half = half_out * 2.0 ** (c - (cascades - 1))
        side = 2 * half / grid_size
        lo.append(tuple(_f32(v) for v in center - half))
        cell.append(tuple(_f32(v) for v in side))
        inv_cell.append(tuple(_f32(1 / v) for v in side))
    half0 = half_out * 2.0 ** (-(cascades - 1))
    diag_out = 2 * float(np.linalg.norm(half_out))
    diag0 = 2 * float(np.linalg.norm(half0))
    dt_min = diag0 / max_steps
    dt_max = max(diag_out / grid_size, dt_min)
    return MarchSpec(
        grid_size=grid_size,
        cascades=cascades,
        max_samples=min(max_steps, max_samples),
        aabb=box,
        center=tuple(_f32(v) for v in center),
        inv_half0=tuple(_f32(1 / v) for v in half0),
        inv_cell0=_f32(grid_size / (2 * float(half0.max()))),
        dt_gamma=_f32(dt_gamma),
        dt_min=_f32(dt_min),
        dt_max=_f32(dt_max),
        lo=tuple(lo),
        cell=tuple(cell),
        inv_cell=tuple(inv_cell),
    )


@dataclass(frozen=True)
class GridSpec:
    """Per-level constants of a multi-resolution hash grid (float32-exact scales, int offsets)."""

    input_dim: int
    level_dim: int
    scales: tuple[float, ...]  # [L] pos = x * scale + shift
    verts: tuple[int, ...]  # [L] vertices per axis of the dense lattice
    offsets: tuple[int, ...]  # [L + 1] first table row of each level
    align_corners: bool
    layout: str = "ngp"  # GRID_LAYOUTS: how scales and lattice sizes follow from the arguments

    @property
    def num_levels(self) -> int:
        return len(self.scales)

    @property
    def shift(self) -> float:
        return 0.0 if self.align_corners else 0.5


GRID_LAYOUTS = ("ngp", "tcnn")
"""``ngp``: one spare vertex per axis, so a corner never leaves its level's lattice (the default, and
the layout of every model trained before 2026-11-27). ``tcnn``: tiny-cuda-nn's own layout (lattice
side ``ceil(scale) + 1``, scales computed in float32 as tcnn does), so the very same table can be
handed to tinycudann on a CUDA host and to cuda_ext anywhere else (cuda_ext/tcnn_probe.py)."""


def per_level_scale(num_levels: int, base_resolution: int, desired_resolution: int) -> float:
    """Growth factor between levels (tiny-cuda-nn's ``per_level_scale``; it reads it as a float)."""
    if num_levels <= 1:
        return 1.0
    return math.exp2(math.log2(desired_resolution / base_resolution) / (num_levels - 1))


def make_grid_spec(
    input_dim: int,
    num_levels: int,
    level_dim: int,
    log2_hashmap_size: int,
    base_resolution: int,
    desired_resolution: int,
    align_corners: bool = False,
    layout: str = "ngp",
) -> GridSpec:
    """Level l has resolution base * s**l (s so that the last level reaches desired_resolution).

    A level whose dense lattice fits in 2**log2_hashmap_size rows is stored densely (no collisions);
    finer levels hash. Each level's row count is rounded up to a multiple of 8 (aligned loads).
    """
    if input_dim not in (2, 3):
        raise KernelInputError(f"input_dim must be 2 or 3, got {input_dim}")
    if level_dim not in (1, 2, 4, 8):
        raise KernelInputError(f"level_dim must be 1, 2, 4 or 8, got {level_dim}")
    if not 1 <= num_levels <= 32:
        raise KernelInputError(f"num_levels must be in [1, 32], got {num_levels}")
    if not 4 <= log2_hashmap_size <= 24:
        raise KernelInputError(f"log2_hashmap_size must be in [4, 24], got {log2_hashmap_size}")
    if base_resolution < 2 or desired_resolution < base_resolution:
        raise KernelInputError("need 2 <= base_resolution <= desired_resolution")
    if layout not in GRID_LAYOUTS:
        raise KernelInputError(f"layout must be one of {', '.join(GRID_LAYOUTS)}, got {layout!r}")
    if layout == "tcnn" and align_corners:
        raise KernelInputError("the tcnn layout has no align_corners (tiny-cuda-nn samples cell centres)")
    per_level = per_level_scale(num_levels, base_resolution, desired_resolution)
    scales, verts, offsets = [], [], [0]
    max_rows = 2**log2_hashmap_size
    for lvl in range(num_levels):
        if layout == "tcnn":
            # tcnn: exp2f(l * log2f(s)) * base - 1 in float32; side ceil(scale) + 1. A corner at the far
            # edge reaches index `side` and wraps into the next lattice row (the row index is taken
            # modulo the level's rows, as tcnn does), which only touches points within half a cell of 1.
            f32 = np.float32
            scale = float(np.exp2(f32(lvl) * np.log2(f32(per_level))) * f32(base_resolution) - f32(1.0))
            v = int(math.ceil(scale)) + 1
        else:
            scale = _f32(base_resolution * per_level**lvl - 1.0)
            v = int(math.ceil(scale)) + 2  # corners reach floor(x * scale + 0.5) + 1 <= ceil(scale) + 1
        rows = min(max_rows, v**input_dim)
        rows = (rows + 7) // 8 * 8
        scales.append(scale)
        verts.append(v)
        offsets.append(offsets[-1] + rows)
    return GridSpec(input_dim, level_dim, tuple(scales), tuple(verts), tuple(offsets), align_corners, layout)
