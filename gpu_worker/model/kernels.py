"""The one place the model reaches the kernels: cuda_ext's public API only.

cuda_ext picks its backend per device (CUDA kernels, C++ CPU kernels, torch reference; see
cuda_ext/backend.py), so nothing in the model changes when the backend does. A grid with the ``tcnn``
layout runs through tinycudann where it imports on a CUDA host, and through cuda_ext elsewhere, on the
same table: checkpoints move between CPU and GPU hosts either way (cuda_ext/tcnn_probe.py).
"""

from __future__ import annotations

from cuda_ext import (
    HashGridEncoder,
    TriPlaneEncoder,
    backend_name,
    composite_rays,
    composite_rays_train,
    grid_cell_positions,
    march_rays,
    march_rays_train,
    near_far_from_aabb,
    packbits,
)

__all__ = [
    "backend_name",
    "composite_rays",
    "march_rays",
    "composite_rays_train",
    "grid_cell_positions",
    "hash_grid",
    "march_rays_train",
    "near_far_from_aabb",
    "packbits",
    "plane_grid",
    "tri_plane_grid",
]


def hash_grid(
    input_dim: int,
    num_levels: int,
    level_dim: int,
    log2_hashmap_size: int,
    base_resolution: int,
    desired_resolution: int,
    layout: str = "ngp",
) -> HashGridEncoder:
    """A multi-resolution hash grid taking inputs in [0, 1]^input_dim -> [P, num_levels * level_dim]."""
    return HashGridEncoder(
        input_dim=input_dim,
        num_levels=num_levels,
        level_dim=level_dim,
        log2_hashmap_size=log2_hashmap_size,
        base_resolution=base_resolution,
        desired_resolution=desired_resolution,
        layout=layout,
    )


def plane_grid(config) -> HashGridEncoder:
    """A 2D hash grid as a FieldConfig or TorsoConfig describes it (levels, table, resolutions, layout)."""
    c = config
    return hash_grid(
        2,
        c.num_levels,
        c.level_dim,
        c.log2_hashmap_size,
        c.base_resolution,
        c.desired_resolution,
        c.grid_layout,
    )


def tri_plane_grid(config) -> TriPlaneEncoder:
    """The xy, yz and xz plane grids of a FieldConfig, each as ``plane_grid`` builds it: inputs in
    [0, 1]^3 -> [P, 3 * num_levels * level_dim]. Where it applies (CPU tables, inputs that need no
    gradient) cuda_ext encodes the three planes in one fused call."""
    c = config
    return TriPlaneEncoder(
        num_levels=c.num_levels,
        level_dim=c.level_dim,
        log2_hashmap_size=c.log2_hashmap_size,
        base_resolution=c.base_resolution,
        desired_resolution=c.desired_resolution,
        layout=c.grid_layout,
    )
