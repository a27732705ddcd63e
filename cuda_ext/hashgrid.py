"""Multi-resolution hash grid encoding (Instant-NGP), 2D or 3D, and the tri-plane the head model uses.

Table layout: one ``embeddings`` parameter [rows, C] holding every level back to back
(GridSpec.offsets); output [N, L*C], level-major. float32 everywhere; float16 tables on CUDA only
(forward returns the table's dtype; gradients are accumulated in float32 and cast back).

``layout="tcnn"`` sizes the table as tiny-cuda-nn does; such a grid runs through tinycudann on a CUDA
host where it imports and through cuda_ext's kernels elsewhere, on the same table (tcnn_probe.py).
"""

from __future__ import annotations

import torch
from torch import nn

from . import reference as ref
from .backend import check, extension_for
from .errors import KernelInputError
from .geometry import GridSpec, make_grid_spec, per_level_scale
from .tcnn_probe import tcnn_config, tcnn_encode, tcnn_encoding

TCNN_DEVICE_TYPES = ("cuda",)  # devices tinycudann runs on (a test adds "cpu" to run a stand-in)


def _spec_args(spec: GridSpec) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    scales = torch.tensor(spec.scales, dtype=torch.float32)
    verts = torch.tensor(spec.verts, dtype=torch.int32)
    offsets = torch.tensor(spec.offsets, dtype=torch.int32)
    return scales, verts, offsets, spec.shift


class _HashEncode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, embeddings, spec, ext):
        args = _spec_args(spec)
        out = ext.hash_encode_forward(x, embeddings, *args)
        ctx.save_for_backward(x, embeddings)
        ctx.spec, ctx.ext, ctx.args = spec, ext, args
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, embeddings = ctx.saved_tensors
        need_x = ctx.needs_input_grad[0]
        # the CPU build reads the gradient through its strides (a slice of a concatenation's or an expanded
        # gradient is not copied); the CUDA kernels want it contiguous
        strided = getattr(ctx.ext, "STRIDED_HASH_GRAD", False) and grad_out.dtype == torch.float32
        grad_out = grad_out if strided else grad_out.contiguous()
        g_emb, g_x = ctx.ext.hash_encode_backward(grad_out, x, embeddings, *ctx.args, need_x)
        return (g_x if need_x else None), g_emb.to(embeddings.dtype), None, None


class _TriPlaneEncode(torch.autograd.Function):
    """The three planes of a TriPlaneEncoder in one CPU kernel call (tables only: x gets no gradient)."""

    @staticmethod
    def forward(ctx, x, planes, spec, ext, *embeddings):
        args = _spec_args(spec)
        out = ext.tri_plane_encode_forward(x, list(embeddings), planes, *args)
        ctx.save_for_backward(x, *embeddings)
        ctx.planes, ctx.ext, ctx.args = planes, ext, args
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, *embeddings = ctx.saved_tensors
        grads = ctx.ext.tri_plane_encode_backward(grad_out.float(), x, embeddings, ctx.planes, *ctx.args)
        return (None, None, None, None, *grads)


def hash_encode(x: torch.Tensor, embeddings: torch.Tensor, spec: GridSpec) -> torch.Tensor:
    """x [N, D] float32 in [0, 1] (clamped), embeddings [rows, C] -> features [N, L*C] (table dtype).

    Differentiable w.r.t. embeddings, and w.r.t. x when x requires grad.
    """
    dev = embeddings.device
    if embeddings.dtype == torch.float16 and dev.type != "cuda":
        raise KernelInputError("float16 hash tables are supported on CUDA only; use float32 on CPU")
    x = check(x, "x", dtype=torch.float32, shape=(None, spec.input_dim), device=dev)
    embeddings = check(
        embeddings,
        "embeddings",
        dtype=(torch.float32, torch.float16),
        shape=(spec.offsets[-1], spec.level_dim),
    )
    x = x.clamp(0.0, 1.0)
    ext = extension_for(dev)
    if ext is None:
        return ref.hash_encode(x, embeddings, spec)
    return _HashEncode.apply(x, embeddings, spec, ext)


class HashGridEncoder(nn.Module):
    """Trainable multi-resolution hash grid: x [..., D] -> [..., num_levels * level_dim].

    Inputs are expected in [0, 1], or in [-bound, bound] when ``bound`` is given (here or in forward).
    """

    def __init__(
        self,
        input_dim: int = 3,
        num_levels: int = 12,
        level_dim: int = 2,
        log2_hashmap_size: int = 16,
        base_resolution: int = 64,
        desired_resolution: int = 512,
        align_corners: bool = False,
        dtype: torch.dtype = torch.float32,
        bound: float | None = None,
        finest_resolution: int | None = None,
        layout: str = "ngp",
    ) -> None:
        super().__init__()
        if finest_resolution is not None:
            desired_resolution = finest_resolution
        if dtype not in (torch.float32, torch.float16):
            raise KernelInputError(f"dtype must be float32 or float16, got {dtype}")
        self.spec = make_grid_spec(
            input_dim,
            num_levels,
            level_dim,
            log2_hashmap_size,
            base_resolution,
            desired_resolution,
            align_corners,
            layout,
        )
        per_level = per_level_scale(num_levels, base_resolution, desired_resolution)
        self._tcnn_args = (log2_hashmap_size, base_resolution, per_level)
        # device -> tcnn.Encoding (or None: use cuda_ext). Kept out of the module tree on purpose:
        # tcnn's encoding has its own parameter, which must not reach state_dict or the optimizer.
        self._tcnn: dict[str, nn.Module | None] = {}
        self.input_dim, self.num_levels, self.level_dim = input_dim, num_levels, level_dim
        self.output_dim = num_levels * level_dim
        self.bound = bound
        # Small uniform init as in Instant-NGP: features start near zero so the MLP sees a smooth field.
        self.embeddings = nn.Parameter(torch.empty(self.spec.offsets[-1], level_dim, dtype=dtype))
        nn.init.uniform_(self.embeddings, -1e-4, 1e-4)

    def extra_repr(self) -> str:
        s = self.spec
        return (
            f"input_dim={s.input_dim}, levels={s.num_levels}, level_dim={s.level_dim}, "
            f"rows={s.offsets[-1]}, resolutions={s.scales[0] + 1:.0f}..{s.scales[-1] + 1:.0f}, "
            f"layout={s.layout}"
        )

    def _tcnn_encoding(self, device: torch.device) -> nn.Module | None:
        """tinycudann's encoding for a tcnn-layout grid on this CUDA device, else None (cuda_ext)."""
        if self.spec.layout != "tcnn" or device.type not in TCNN_DEVICE_TYPES:
            return None
        key = str(device)
        if key not in self._tcnn:
            config = tcnn_config(self.spec, *self._tcnn_args)
            self._tcnn[key] = tcnn_encoding(self.spec, config, self.embeddings.dtype, device)
        return self._tcnn[key]

    @property
    def backend(self) -> str:
        """``tinycudann`` or ``cuda_ext``: what computes this grid on the table's current device."""
        return "tinycudann" if self._tcnn_encoding(self.embeddings.device) is not None else "cuda_ext"

    def forward(self, x: torch.Tensor, bound: float | None = None) -> torch.Tensor:
        bound = self.bound if bound is None else bound
        if x.shape[-1] != self.input_dim:
            raise KernelInputError(f"expected inputs [..., {self.input_dim}], got {list(x.shape)}")
        lead = x.shape[:-1]
        x = x.reshape(-1, self.input_dim)
        if bound is not None:
            x = (x + bound) / (2 * bound)
        tcnn = self._tcnn_encoding(self.embeddings.device)
        if tcnn is not None and x.device == self.embeddings.device:
            out = tcnn_encode(tcnn, x.float().clamp(0.0, 1.0).contiguous(), self.embeddings)
        else:
            out = hash_encode(x.float(), self.embeddings, self.spec)
        return out.reshape(*lead, self.output_dim)


class TriPlaneEncoder(nn.Module):
    """Three 2D hash grids on the xy, yz and xz planes, concatenated: x [..., 3] -> [..., 3 * L * C]."""

    PLANES = ((0, 1), (1, 2), (0, 2))

    def __init__(
        self,
        num_levels: int = 12,
        level_dim: int = 1,
        log2_hashmap_size: int = 14,
        base_resolution: int = 64,
        desired_resolution: int = 512,
        align_corners: bool = False,
        dtype: torch.dtype = torch.float32,
        bound: float | None = None,
        layout: str = "ngp",
    ) -> None:
        super().__init__()
        self.planes = nn.ModuleList(
            HashGridEncoder(
                2,
                num_levels,
                level_dim,
                log2_hashmap_size,
                base_resolution,
                desired_resolution,
                align_corners,
                dtype,
                layout=layout,
            )  # fmt: skip
            for _ in self.PLANES
        )
        self.bound = bound
        self.output_dim = 3 * num_levels * level_dim

    def forward(self, x: torch.Tensor, bound: float | None = None) -> torch.Tensor:
        bound = self.bound if bound is None else bound
        if x.shape[-1] != 3:
            raise KernelInputError(f"expected inputs [..., 3], got {list(x.shape)}")
        if bound is not None:
            x = (x + bound) / (2 * bound)
        fused = self._fused_extension(x)
        if fused is not None:
            lead = x.shape[:-1]
            flat = x.reshape(-1, 3).float().contiguous()
            tables = [enc.embeddings for enc in self.planes]
            out = _TriPlaneEncode.apply(flat, self._plane_dims, self.planes[0].spec, fused, *tables)
            return out.reshape(*lead, self.output_dim)
        return torch.cat(
            [enc(x[..., list(p)]) for enc, p in zip(self.planes, self.PLANES, strict=True)], dim=-1
        )

    def _fused_extension(self, x: torch.Tensor):
        """The extension that encodes all three planes in one call (the C++ CPU build), else None.

        Same result as the three planes one by one (tests/cuda_ext/test_hashgrid.py); not taken when x
        needs a gradient (the fused op gives the tables theirs only) or a plane runs through tinycudann.
        """
        tables = [enc.embeddings for enc in self.planes]
        if x.device != tables[0].device or any(t.dtype != torch.float32 for t in tables):
            return None
        if x.requires_grad and torch.is_grad_enabled():
            return None
        if any(
            enc.spec != self.planes[0].spec or enc._tcnn_encoding(x.device) is not None for enc in self.planes
        ):
            return None
        ext = extension_for(x.device)
        if ext is None or not hasattr(ext, "tri_plane_encode_forward"):
            return None
        return ext

    @property
    def _plane_dims(self) -> torch.Tensor:
        return torch.tensor(self.PLANES, dtype=torch.int32)
