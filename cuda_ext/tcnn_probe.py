"""The one place that reaches tiny-cuda-nn (an optional, faster hash grid on CUDA hosts).

A ``HashGridEncoder`` built with ``layout="tcnn"`` keeps its table in tiny-cuda-nn's own layout
(geometry.GRID_LAYOUTS). On a CUDA host where tinycudann imports, its forward hands that very table to
a ``tcnn.Encoding`` (``tcnn_encode``); everywhere else cuda_ext's kernels compute the same function
from the same table. The table stays the module's one parameter (``embeddings``), so checkpoints
move between hosts with and without tinycudann unchanged.

``SYNCTALK_TCNN=0`` turns tinycudann off (to compare the two backends, or to rule it out).
Never raises on import.
"""

from __future__ import annotations

import contextlib
import functools
import os
import warnings
from types import ModuleType

import torch
from torch import nn

from .geometry import GridSpec


@functools.cache
def tinycudann() -> ModuleType | None:
    """The tinycudann module, or None (with one warning) where it is missing or there is no GPU."""
    if os.environ.get("SYNCTALK_TCNN", "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    if not torch.cuda.is_available():
        return None  # CPU hosts never use tcnn: nothing to warn about
    try:
        import tinycudann as tcnn  # type: ignore[import-not-found]
    except Exception as exc:  # ImportError, or a binary built for another torch/CUDA
        warnings.warn(
            f"tinycudann unavailable ({type(exc).__name__}: {exc}); using cuda_ext's hash grid",
            RuntimeWarning,
            stacklevel=2,
        )
        return None
    return tcnn


def tcnn_config(spec: GridSpec, log2_hashmap_size: int, base_resolution: int, per_level: float) -> dict:
    """tiny-cuda-nn's encoding config for a grid whose spec has the tcnn layout."""
    if spec.layout != "tcnn":
        raise ValueError(f"a tcnn encoding needs a grid with layout='tcnn', not {spec.layout!r}")
    return {
        "otype": "Grid",
        "type": "Hash",
        "n_levels": spec.num_levels,
        "n_features_per_level": spec.level_dim,
        "log2_hashmap_size": log2_hashmap_size,
        "base_resolution": base_resolution,
        "per_level_scale": float(per_level),
        "interpolation": "Linear",
    }


def tcnn_encoding(spec: GridSpec, config: dict, dtype: torch.dtype, device: torch.device) -> nn.Module | None:
    """A ``tcnn.Encoding`` for this grid on ``device``, or None to use cuda_ext.

    Returns None (with a warning) when tinycudann's table would not be ours row for row: then the
    two layouts disagree (another tinycudann version), and cuda_ext is the safe choice.
    """
    tcnn = tinycudann()
    if tcnn is None:
        return None
    on_device = torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()
    with on_device:
        enc = tcnn.Encoding(spec.input_dim, config, dtype=dtype)
    expected = spec.offsets[-1] * spec.level_dim
    if enc.params.numel() != expected or enc.n_output_dims != spec.num_levels * spec.level_dim:
        warnings.warn(
            f"tinycudann's grid has {enc.params.numel()} parameters, cuda_ext's tcnn layout {expected}: "
            "using cuda_ext's hash grid",
            RuntimeWarning,
            stacklevel=2,
        )
        return None
    return enc


def tcnn_encode(enc: nn.Module, x: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
    """x [N, D] float32 in [0, 1] on CUDA, embeddings [rows, C] -> [N, L*C] through tiny-cuda-nn.

    The encoding's own parameter is swapped for our table for this call (``functional_call``), so
    gradients land on ``embeddings`` and the optimizer never sees a second copy.
    """
    if x.shape[0] == 0:
        return embeddings.new_zeros(0, enc.n_output_dims)
    return torch.func.functional_call(enc, {"params": embeddings.reshape(-1)}, (x,))
