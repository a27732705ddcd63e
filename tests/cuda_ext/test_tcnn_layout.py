"""The ``tcnn`` grid layout: cuda_ext computes tiny-cuda-nn's hash grid from tiny-cuda-nn's table, and a
tcnn-layout HashGridEncoder hands its one table to tinycudann where it is present.

tinycudann needs a GPU and is not on PyPI, so the CPU tests use ``TcnnGridOracle``: tiny-cuda-nn's
HashGrid written out in torch from its CUDA source (include/tiny-cuda-nn/encodings/grid.h: level
sizes, lattice index, hash, interpolation), independently of cuda_ext's GridSpec. The GPU test at the
end compares with the real tinycudann where the GPU image has it.
"""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch
from kernel_helpers import kernels
from torch import nn

import cuda_ext as ce
from cuda_ext import hashgrid, tcnn_probe
from cuda_ext.geometry import make_grid_spec, per_level_scale

PRIMES = (1, 2654435761, 805459861)


class TcnnGridOracle(nn.Module):
    """tiny-cuda-nn's ``Encoding(n_input_dims, {"otype": "Grid", "type": "Hash", ...})`` on CPU."""

    def __init__(self, n_input_dims: int, config: dict, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.dim = n_input_dims
        self.features = config["n_features_per_level"]
        pls = np.float32(config["per_level_scale"])
        self.levels = []  # (first row, rows, scale, resolution)
        offset = 0
        for level in range(config["n_levels"]):
            scale = np.exp2(np.float32(level) * np.log2(pls)) * np.float32(config["base_resolution"])
            scale = float(scale - np.float32(1.0))
            resolution = int(np.ceil(np.float32(scale))) + 1
            rows = -(-(resolution**n_input_dims) // 8) * 8  # next multiple of 8
            rows = min(rows, 2 ** config["log2_hashmap_size"])
            self.levels.append((offset, rows, scale, resolution))
            offset += rows
        self.params = nn.Parameter(torch.full((offset * self.features,), 0.5, dtype=dtype))
        self.n_output_dims = config["n_levels"] * self.features

    def _index(self, corner: torch.Tensor, rows: int, resolution: int) -> torch.Tensor:
        index = torch.zeros_like(corner[:, 0])
        stride = 1
        for dim in range(self.dim):  # grid_index(): the loop stops once stride exceeds the table
            if stride > rows:
                break
            index = index + corner[:, dim] * stride
            stride *= resolution
        if rows < stride:  # hashed level
            index = torch.zeros_like(corner[:, 0])
            for dim in range(self.dim):
                index = index ^ ((corner[:, dim] * PRIMES[dim]) & 0xFFFFFFFF)
        return index % rows

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        table = self.params.view(-1, self.features)
        out = []
        for first, rows, scale, resolution in self.levels:
            pos = x * scale + 0.5
            grid = torch.floor(pos)
            frac = pos - grid
            grid = grid.long()
            acc = 0
            for corner in range(2**self.dim):
                bits = torch.tensor([(corner >> d) & 1 for d in range(self.dim)])
                weight = torch.ones(x.shape[0])
                for d in range(self.dim):
                    weight = weight * (frac[:, d] if bits[d] else 1 - frac[:, d])
                row = first + self._index(grid + bits, rows, resolution)
                acc = acc + weight[:, None] * table[row]
            out.append(acc)
        return torch.cat(out, 1)


# (input_dim, levels, features, log2 table, base, finest): the field's and torso's tri-plane grids,
# a 3D grid, and a grid whose level 2 is dense in tcnn's layout (128^2 = 2^14) but would hash in ngp's
CONFIGS = [
    (2, 8, 2, 14, 16, 256),
    (2, 6, 2, 14, 8, 128),
    (3, 5, 2, 12, 4, 64),
    (2, 3, 1, 14, 32, 512),
]


def _grid_and_oracle(cfg, seed: int = 0):
    dim, levels, feats, log2, base, finest = cfg
    enc = ce.HashGridEncoder(dim, levels, feats, log2, base, finest, layout="tcnn")
    with torch.no_grad():
        enc.embeddings.copy_(torch.randn(enc.embeddings.shape, generator=torch.Generator().manual_seed(seed)))
    config = tcnn_probe.tcnn_config(enc.spec, log2, base, per_level_scale(levels, base, finest))
    return enc, TcnnGridOracle(dim, config)


def _points(n: int, dim: int) -> torch.Tensor:
    """Random points plus the box's faces and corners (where a far-edge corner wraps in tcnn)."""
    x = torch.rand(n, dim, generator=torch.Generator().manual_seed(1))
    edges = torch.tensor([[1.0] * dim, [0.0] * dim, [1.0, 0.0, 1.0][:dim], [0.999999, 1.0, 0.5][:dim]])
    return torch.cat([x, edges])


@pytest.mark.parametrize("cfg", CONFIGS)
def test_tcnn_layout_is_tiny_cuda_nns_grid(cfg, cpp):
    enc, oracle = _grid_and_oracle(cfg)
    # the same table, row for row: same parameter count and level offsets
    assert enc.spec.offsets[-1] * enc.spec.level_dim == oracle.params.numel()
    assert [first for first, *_ in oracle.levels] == list(enc.spec.offsets[:-1])
    x = _points(3000, cfg[0])
    with torch.no_grad():
        oracle.params.copy_(enc.embeddings.reshape(-1))
        want = oracle(x)
    for mode in ("torch", ""):  # the reference and the C++ kernels
        with kernels(mode):
            got = enc(x)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_tcnn_layout_differs_from_ngp_where_it_should():
    """The mixed case of CONFIGS[3]: level 2 is dense in tcnn's layout (side 128), hashed in ngp's (129)."""
    tc = make_grid_spec(2, 3, 1, 14, 32, 512, layout="tcnn")
    ngp = make_grid_spec(2, 3, 1, 14, 32, 512)
    assert tc.verts[1] == 128 and tc.verts[1] ** 2 <= tc.offsets[2] - tc.offsets[1]
    assert ngp.verts[1] == 129 and ngp.verts[1] ** 2 > ngp.offsets[2] - ngp.offsets[1]
    with pytest.raises(ce.KernelInputError, match="layout"):
        make_grid_spec(2, 3, 1, 14, 32, 512, layout="torch-ngp")
    with pytest.raises(ce.KernelInputError, match="align_corners"):
        make_grid_spec(2, 3, 1, 14, 32, 512, align_corners=True, layout="tcnn")


@pytest.fixture
def stand_in_tcnn(monkeypatch):
    """tinycudann replaced by the oracle, on CPU: the encoder's dispatch runs as on a GPU host."""
    built = []

    def encoding(n_input_dims, config, seed=1337, dtype=None):
        built.append(TcnnGridOracle(n_input_dims, config, dtype or torch.float32))
        return built[-1]

    monkeypatch.setattr(tcnn_probe, "tinycudann", lambda: types.SimpleNamespace(Encoding=encoding))
    monkeypatch.setattr(hashgrid, "TCNN_DEVICE_TYPES", ("cuda", "cpu"))
    return built


def test_encoder_hands_its_table_to_tinycudann(stand_in_tcnn, cpp):
    cfg = CONFIGS[0]
    enc, _ = _grid_and_oracle(cfg)
    twin = ce.HashGridEncoder(*cfg[:6], layout="tcnn")  # cuda_ext on the same table
    twin.load_state_dict(enc.state_dict())
    assert enc.backend == "tinycudann" and len(stand_in_tcnn) == 1
    # tcnn's own parameter stays outside the module: one table in state_dict and in the optimizer
    assert list(enc.state_dict()) == ["embeddings"]
    assert [p.shape for p in enc.parameters()] == [enc.embeddings.shape]

    x = _points(500, 2)
    y = enc(x)
    y_twin = hashgrid.hash_encode(x, twin.embeddings, twin.spec)
    torch.testing.assert_close(y, y_twin, rtol=1e-5, atol=1e-5)
    weights = torch.randn_like(y)
    (y * weights).sum().backward()
    (y_twin * weights).sum().backward()
    assert stand_in_tcnn[0].params.grad is None  # the gradient lands on our table only
    torch.testing.assert_close(enc.embeddings.grad, twin.embeddings.grad, rtol=1e-5, atol=1e-5)
    enc(x)
    assert len(stand_in_tcnn) == 1  # built once per device


def test_ngp_grids_never_reach_tinycudann(stand_in_tcnn):
    enc = ce.HashGridEncoder(2, 4, 2, 10, 8, 64)
    enc(torch.rand(10, 2))
    assert enc.backend == "cuda_ext" and not stand_in_tcnn


def test_a_tinycudann_with_another_layout_is_not_used(monkeypatch, stand_in_tcnn):
    enc = ce.HashGridEncoder(2, 4, 2, 10, 8, 64, layout="tcnn")

    def other_layout(n_input_dims, config, seed=1337, dtype=None):
        oracle = TcnnGridOracle(n_input_dims, config)
        oracle.params = nn.Parameter(torch.zeros(oracle.params.numel() + 8))
        return oracle

    monkeypatch.setattr(tcnn_probe, "tinycudann", lambda: types.SimpleNamespace(Encoding=other_layout))
    with pytest.warns(RuntimeWarning, match="using cuda_ext"):
        assert enc.backend == "cuda_ext"


def test_tcnn_can_be_turned_off(monkeypatch):
    """On a CUDA host where tinycudann imports (both faked here), SYNCTALK_TCNN=0 still says no."""
    fake = types.ModuleType("tinycudann")
    monkeypatch.setitem(sys.modules, "tinycudann", fake)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    tcnn_probe.tinycudann.cache_clear()
    try:
        assert tcnn_probe.tinycudann() is fake
        tcnn_probe.tinycudann.cache_clear()
        monkeypatch.setenv("SYNCTALK_TCNN", "0")
        assert tcnn_probe.tinycudann() is None
    finally:
        tcnn_probe.tinycudann.cache_clear()


@pytest.mark.gpu
def test_real_tinycudann_matches_cuda_ext(cuda):
    """On a GPU host with tinycudann: its grid and cuda_ext's compute the same thing on one table."""
    pytest.importorskip("tinycudann")
    cfg = CONFIGS[0]
    enc, _ = _grid_and_oracle(cfg)
    enc = enc.cuda()
    assert enc.backend == "tinycudann"
    x = _points(100_000, 2).cuda()
    y = enc(x)
    y_ext = hashgrid.hash_encode(x, enc.embeddings, enc.spec)
    torch.testing.assert_close(y, y_ext, rtol=1e-4, atol=1e-4)
    weights = torch.randn_like(y)
    (g_tcnn,) = torch.autograd.grad((y * weights).sum(), enc.embeddings)
    (g_ext,) = torch.autograd.grad((y_ext * weights).sum(), enc.embeddings)
    torch.testing.assert_close(g_tcnn, g_ext, rtol=1e-3, atol=1e-3)
