"""The one place that probes for tiny-cuda-nn (an optional, faster hash grid on CUDA).

``tcnn_hash_grid(...)`` returns a tcnn.Encoding when tinycudann imports on a CUDA machine, else
None with one warning per process; callers then use HashGridEncoder. Never raises on import.
"""

from __future__ import annotations

import functools
import warnings
from types import ModuleType

import torch


@functools.cache
def tinycudann() -> ModuleType | None:
    """The tinycudann module, or None (with one warning) where it is missing or there is no GPU."""
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


def tcnn_hash_grid(
    input_dim: int,
    num_levels: int,
    level_dim: int,
    log2_hashmap_size: int,
    base_resolution: int,
    desired_resolution: int,
) -> torch.nn.Module | None:
    """A tinycudann HashGrid with the same level layout as HashGridEncoder, or None to fall back."""
    tcnn = tinycudann()
    if tcnn is None:
        return None
    per_level = (desired_resolution / base_resolution) ** (1 / max(num_levels - 1, 1))
    config = {
        "otype": "HashGrid",
        "n_levels": num_levels,
        "n_features_per_level": level_dim,
        "log2_hashmap_size": log2_hashmap_size,
        "base_resolution": base_resolution,
        "per_level_scale": per_level,
    }
    return tcnn.Encoding(input_dim, config)
