"""Lazy backend loader: a prebuilt module, else a JIT build cached on disk, else None (the reference).

Nothing here runs at import time; the first op on a device calls get(). A failure is reported once
per variant as a warning and the ops fall back to the torch reference.
Set SYNCTALK_KERNELS_JIT=0 to never compile at run time (use prebuilt or cached builds only).
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import threading
import time
import warnings
from types import ModuleType

from . import build_spec
from .errors import KernelBuildError

ABI_VERSION = 1  # bump with any change of a binding's signature; checked against the module's ABI_VERSION
_loaded: dict[str, ModuleType | None] = {}
_lock = threading.Lock()


def _cuda_env() -> None:
    # torch guesses CUDA_HOME from `which nvcc`; here that is a wrapper script, so name the toolkit.
    if not os.environ.get("CUDA_HOME"):
        for cand in ("/usr/local/cuda-13.0", "/usr/local/cuda"):
            if os.path.exists(os.path.join(cand, "bin", "nvcc")):
                os.environ["CUDA_HOME"] = cand
                break
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", build_spec.cuda_arch_list())


def _check_abi(mod: ModuleType) -> ModuleType:
    if getattr(mod, "ABI_VERSION", None) != ABI_VERSION:
        raise KernelBuildError(
            f"{mod.__name__} has ABI {getattr(mod, 'ABI_VERSION', None)}, need {ABI_VERSION}"
        )
    return mod


def build(variant: str, verbose: bool = False) -> ModuleType:
    """JIT-compile (or load the up-to-date cached build of) one variant; raises KernelBuildError."""
    _cuda_env()  # before importing cpp_extension, which otherwise guesses CUDA_HOME from the nvcc wrapper
    # Its import logs "No CUDA runtime is found" on CPU hosts: expected here, so keep it quiet.
    ext_log = logging.getLogger("torch.utils.cpp_extension")
    level = ext_log.level
    ext_log.setLevel(logging.ERROR)
    try:
        from torch.utils import cpp_extension
    finally:
        ext_log.setLevel(level)

    directory = build_spec.build_dir(variant)
    directory.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    try:
        mod = cpp_extension.load(
            name=build_spec.module_name(variant),
            sources=build_spec.sources(variant),
            extra_cflags=build_spec.extra_cflags(variant),
            extra_cuda_cflags=build_spec.extra_cuda_cflags(variant),
            extra_ldflags=build_spec.extra_ldflags(variant),
            extra_include_paths=build_spec.include_dirs(),
            build_directory=str(directory),
            with_cuda=variant == "cuda",
            verbose=verbose,
        )
    except Exception as exc:  # compiler errors surface as RuntimeError / CalledProcessError
        raise KernelBuildError(f"building the {variant} kernels failed: {exc}") from exc
    if verbose:
        print(f"cuda_ext: {variant} extension ready in {time.monotonic() - start:.1f} s ({directory})")
    return _check_abi(mod)


def _load(variant: str) -> ModuleType | None:
    import torch

    if variant == "cuda" and not torch.cuda.is_available():
        return None
    try:
        return _check_abi(importlib.import_module(f"cuda_ext._C_{variant}"))
    except ImportError:
        pass
    except KernelBuildError as exc:
        print(f"cuda_ext: ignoring stale prebuilt module ({exc})", file=sys.stderr)
    if os.environ.get("SYNCTALK_KERNELS_JIT", "1") == "0":
        warnings.warn(
            f"cuda_ext: no prebuilt {variant} kernels and SYNCTALK_KERNELS_JIT=0; using the torch reference (slow)",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
    try:
        return build(variant)
    except KernelBuildError as exc:
        warnings.warn(f"cuda_ext: {exc}; using the torch reference (slow)", RuntimeWarning, stacklevel=3)
        return None


def get(variant: str) -> ModuleType | None:
    """The extension module for "cpu" or "cuda", loading or building it on first use; None = reference."""
    if variant in _loaded:
        return _loaded[variant]
    with _lock:
        if variant not in _loaded:
            _loaded[variant] = _load(variant)
    return _loaded[variant]
