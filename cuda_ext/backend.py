"""Which implementation runs an op, and the input checks every public op shares.

CUDA tensors -> the CUDA extension; CPU tensors -> the C++ extension; either falls back to the torch
reference (one warning, from the loader) when its extension cannot be built or loaded.
``SYNCTALK_KERNELS=torch`` forces the reference everywhere (read at call time, so tests can flip it).
"""

from __future__ import annotations

import os
from types import ModuleType

import torch

from . import loader
from .errors import KernelInputError


def forced_reference() -> bool:
    return os.environ.get("SYNCTALK_KERNELS", "").strip().lower() in ("torch", "reference", "ref")


def extension_for(device: torch.device | str | None) -> ModuleType | None:
    """The compiled module serving tensors on `device`, or None for the torch reference."""
    if forced_reference():
        return None
    dev = torch.device(device if device is not None else "cpu")
    return loader.get("cuda" if dev.type == "cuda" else "cpu")


def backend_name(device: torch.device | str | None = None) -> str:
    """ "cuda" | "cpp" | "torch": what runs ops on tensors of `device` in this process."""
    dev = torch.device(device if device is not None else "cpu")
    if extension_for(dev) is None:
        return "torch"
    return "cuda" if dev.type == "cuda" else "cpp"


def check(
    t: torch.Tensor,
    name: str,
    *,
    dtype: torch.dtype | tuple[torch.dtype, ...] | None = None,
    shape: tuple[int | None, ...] | None = None,
    device: torch.device | None = None,
) -> torch.Tensor:
    """Validate a kernel input and return it contiguous (a copy only when it was not)."""
    if not isinstance(t, torch.Tensor):
        raise KernelInputError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if device is not None and t.device != device:
        raise KernelInputError(f"{name} is on {t.device} but the other inputs are on {device}")
    if dtype is not None:
        allowed = dtype if isinstance(dtype, tuple) else (dtype,)
        if t.dtype not in allowed:
            names = " or ".join(str(d).replace("torch.", "") for d in allowed)
            raise KernelInputError(f"{name} must be {names}, got {str(t.dtype).replace('torch.', '')}")
    if shape is not None:
        ok = t.dim() == len(shape) and all(s is None or s == a for s, a in zip(shape, t.shape, strict=True))
        if not ok:
            want = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
            raise KernelInputError(f"{name} must have shape {want}, got {list(t.shape)}")
    return t.contiguous()
