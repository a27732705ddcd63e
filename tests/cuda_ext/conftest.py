"""Fixtures of the kernel tests. Needs only torch, numpy and pytest (no project settings), so the GPU
check runs with:  python3 -m pytest -p no:cacheprovider --confcutdir=tests/cuda_ext -m gpu tests/cuda_ext
"""

from __future__ import annotations

import contextlib
import os

import pytest
import torch

from cuda_ext import loader


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


@pytest.fixture(scope="session")
def cpp():
    """The C++ extension; fails under CI (where `make test` built it), skips elsewhere if it cannot build."""
    os.environ.pop("SYNCTALK_KERNELS", None)
    mod = loader.get("cpu")
    if mod is None:
        if os.environ.get("CI") == "true":
            pytest.fail("the C++ kernels did not build (run `python -m cuda_ext.build --cpu -v`)")
        pytest.skip("C++ kernels unavailable")
    return mod


@pytest.fixture(scope="session")
def cuda():
    """The CUDA extension on a GPU host (a build failure there fails the test, it does not skip)."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    os.environ.pop("SYNCTALK_KERNELS", None)
    return loader.build("cuda")


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
