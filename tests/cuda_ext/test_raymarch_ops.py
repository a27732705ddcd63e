"""Ray/box, Morton codes, bitfield and density-grid helpers: C++ against the reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from kernel_helpers import both, camera_rays, kernels

import cuda_ext as ce
from cuda_ext.errors import KernelInputError

AABB = torch.tensor([-1.0, -1.0, -1.0, 1.0, 1.0, 1.0])


@pytest.mark.parametrize("n", [0, 1, 1000])
def test_near_far_matches_reference(cpp, n):
    o, d = camera_rays(n, spread=1.0)
    (rn, rf), (cn, cf) = both(ce.near_far_from_aabb, o, d, AABB)
    torch.testing.assert_close(cn, rn, rtol=0, atol=0)
    torch.testing.assert_close(cf, rf, rtol=0, atol=0)


def test_near_far_geometry(cpp):
    o = torch.tensor([[0.0, 0.0, 3.0], [0.0, 0.0, 3.0], [0.0, 0.0, 0.0], [5.0, 5.0, 5.0], [0.5, 0.0, 3.0]])
    d = torch.tensor([[0.0, 0.0, -1.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 0.0, -1.0]])
    for mode in ("torch", ""):
        with kernels(mode):
            near, far = ce.near_far_from_aabb(o, d, AABB, min_near=0.05)
        assert near[0] == pytest.approx(2.0) and far[0] == pytest.approx(4.0)  # straight through
        assert near[1] == far[1] == pytest.approx(1e10)  # box behind the camera
        assert near[2] == pytest.approx(0.05) and far[2] == pytest.approx(1.0)  # starts inside
        assert near[3] == far[3] == pytest.approx(1e10)  # passes beside the box
        assert torch.isfinite(near).all() and torch.isfinite(far).all()  # zero direction components: no NaN


def test_morton_roundtrip_and_bit_layout(cpp):
    coords = torch.randint(0, 1024, (5000, 3), dtype=torch.int32)
    ref, out = both(ce.morton3D, coords)
    assert torch.equal(ref, out)
    _, back = both(ce.morton3D_invert, out)
    assert torch.equal(back, coords)
    unit = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1], [2, 0, 0]], dtype=torch.int32)
    assert ce.morton3D(unit).tolist() == [1, 2, 4, 8]
    # Morton order of a 2^3 grid covers every index exactly once
    g = torch.stack(torch.meshgrid(*[torch.arange(8)] * 3, indexing="ij"), -1).reshape(-1, 3).int()
    assert sorted(ce.morton3D(g).tolist()) == list(range(512))


def test_packbits_bits_follow_threshold(cpp):
    grid = torch.rand(2, 16**3)
    ref, out = both(ce.packbits, grid, 0.3)
    assert torch.equal(ref, out) and out.dtype == torch.uint8 and out.shape == (2 * 16**3 // 8,)
    expect = np.packbits((grid.numpy() > 0.3).reshape(-1), bitorder="little")
    assert np.array_equal(out.numpy(), expect)


def test_packbits_rejects_bad_grid():
    with pytest.raises(KernelInputError, match="multiple of 8"):
        ce.packbits(torch.rand(1, 7), 0.1)
    with pytest.raises(KernelInputError, match="float32"):
        ce.packbits(torch.rand(1, 64, dtype=torch.float64), 0.1)


def test_update_density_grid_is_a_decayed_max_that_keeps_masked_cells():
    grid = torch.tensor([[1.0, 0.5, -1.0, 0.0]])
    new = torch.tensor([[0.1, 2.0, 5.0, 0.0]])
    ce.update_density_grid(grid, new, decay=0.5)
    assert grid.tolist() == [[0.5, 2.0, -1.0, 0.0]]


def test_grid_cell_positions_are_cell_centres_in_morton_order():
    pos = ce.grid_cell_positions(AABB, 4)  # [64, 3]
    assert pos.shape == (64, 3)
    assert torch.allclose(pos[0], torch.tensor([-0.75, -0.75, -0.75]))
    assert torch.allclose(pos[1], torch.tensor([-0.25, -0.75, -0.75]))  # morton 1 = +x
    inner = ce.grid_cell_positions(AABB, 4, cascade=0, cascades=2)
    assert inner.abs().max() <= 0.5  # the finest cascade spans half the box


def test_errors_are_clear():
    o, d = camera_rays(4)
    with pytest.raises(KernelInputError, match=r"rays_d must have shape \[4, 3\]"):
        ce.near_far_from_aabb(o, d[:3], AABB)
    with pytest.raises(KernelInputError, match="rays_o must be float32"):
        ce.near_far_from_aabb(o.double(), d, AABB)
    with pytest.raises(KernelInputError, match="other inputs are on meta"):
        ce.near_far_from_aabb(o.to("meta"), d, AABB)
    with pytest.raises(KernelInputError, match="6 values"):
        ce.near_far_from_aabb(o, d, torch.zeros(4))
    with pytest.raises(KernelInputError, match="power of two"):
        ce.march_rays_train(o, d, AABB, torch.zeros(1, dtype=torch.uint8), *ce.near_far_from_aabb(o, d, AABB),
                            grid_size=100)  # fmt: skip
