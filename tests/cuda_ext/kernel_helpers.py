"""Helpers of the kernel tests: backend switching, reference-vs-compiled calls, rays and grids.

A module of its own (not conftest.py): every tests folder has a conftest, and `from conftest import`
finds whichever of them was imported last."""

from __future__ import annotations

import contextlib
import os

import torch


@contextlib.contextmanager
def kernels(mode: str):
    """Run the public ops on the torch reference (mode "torch") or the compiled backend (mode "")."""
    old = os.environ.get("SYNCTALK_KERNELS")
    os.environ["SYNCTALK_KERNELS"] = mode
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("SYNCTALK_KERNELS", None)
        else:
            os.environ["SYNCTALK_KERNELS"] = old


def both(fn, *args, **kwargs):
    """(reference result, compiled result) of a public op called with the same arguments."""
    with kernels("torch"):
        ref = fn(*args, **kwargs)
    with kernels(""):
        out = fn(*args, **kwargs)
    return ref, out


def camera_rays(n: int, seed: int = 0, device: str = "cpu", spread: float = 0.3):
    """n rays from in front of the unit box towards it, some wide enough to miss."""
    g = torch.Generator().manual_seed(seed)
    o = torch.randn(n, 3, generator=g) * 0.1 + torch.tensor([0.0, 0.0, 3.0])
    d = torch.randn(n, 3, generator=g) * spread + torch.tensor([0.0, 0.0, -1.0])
    d = torch.nn.functional.normalize(d, dim=1)
    return o.to(device), d.to(device)


def sphere_grid(grid_size: int = 32, cascades: int = 1, radius: float = 0.6, aabb=(-1, -1, -1, 1, 1, 1)):
    """Density grid [C, G^3] (Morton order) that is occupied inside a sphere."""
    from cuda_ext.raymarching import grid_cell_positions

    box = torch.tensor(aabb, dtype=torch.float32)
    grids = [
        (grid_cell_positions(box, grid_size, c, cascades).norm(dim=1) < radius).float() * 10
        for c in range(cascades)
    ]
    return torch.stack(grids)
