"""The one place the model reaches the kernels: cuda_ext's public API only.

cuda_ext picks its backend per device (CUDA kernels, C++ CPU kernels, torch reference; see
cuda_ext/backend.py), so nothing in the model changes when the backend does. tinycudann is not used
for the hash grids yet: cuda_ext's own CUDA grid has the same layout on every device, which keeps
checkpoints portable between CPU and GPU hosts.
"""

from __future__ import annotations

import torch

from cuda_ext import (
    HashGridEncoder,
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
]


def hash_grid(
    input_dim: int,
    num_levels: int,
    level_dim: int,
    log2_hashmap_size: int,
    base_resolution: int,
    desired_resolution: int,
) -> torch.nn.Module:
    """A multi-resolution hash grid taking inputs in [0, 1]^input_dim -> [P, num_levels * level_dim]."""
    return HashGridEncoder(
        input_dim=input_dim,
        num_levels=num_levels,
        level_dim=level_dim,
        log2_hashmap_size=log2_hashmap_size,
        base_resolution=base_resolution,
        desired_resolution=desired_resolution,
    )
