"""The one description of how the extensions are built, used by the JIT loader and by setup_ext.py.

Two extensions with the same op names: ``cpu`` (C++ kernels, multithreaded with ATen's OpenMP pool)
and ``cuda`` (the CUDA kernels). Both compile the per-element math in csrc/*_math.h.
Never imports anything that compiles.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
CSRC = PACKAGE_DIR / "csrc"
DEFAULT_CUDA_ARCHS = "8.0;8.6;8.9;9.0"

SOURCES = {
    "cpu": ["cpu/raymarch_cpu.cpp", "cpu/hashgrid_cpu.cpp", "cpu/bind_cpu.cpp"],
    "cuda": ["cuda/raymarch_cuda.cu", "cuda/hashgrid_cuda.cu", "cuda/bind_cuda.cpp"],
}
# -ffp-contract=off / --fmad=false: no fused multiply-add, so the marcher's float comparisons come out
# the same as in the torch reference (a fused a*b+c rounds once and can move a sample across a cell).
CXX_FLAGS = ["-O3", "-ffp-contract=off"]  # the C++ standard comes from torch (C++20 for 2.14)
NVCC_FLAGS = ["-O3", "--fmad=false"]


def module_name(variant: str) -> str:
    """Name of the JIT-built module (the prebuilt one is cuda_ext._C_<variant>)."""
    return f"synctalk_kernels_{variant}"


def sources(variant: str) -> list[str]:
    return [str(CSRC / s) for s in SOURCES[variant]]


def headers() -> list[Path]:
    return sorted(CSRC.rglob("*.h"))


def cuda_arch_list() -> str:
    return os.environ.get("TORCH_CUDA_ARCH_LIST") or DEFAULT_CUDA_ARCHS


# -fno-trapping-math: lets gcc turn the CPU kernels' selects and float-to-int conversions into SIMD (with
# trapping math on, an `a > b ? x : y` on floats stays a branch); no float result changes, only exception
# flags, which nothing reads. No -march: the AVX2 copies of the hot loops are chosen at run time.
CPU_FLAGS = ["-fopenmp", "-fno-trapping-math"]


def extra_cflags(variant: str) -> list[str]:
    # -fopenmp: at::parallel_for is an inline `omp parallel`; without it the CPU kernels run on one thread.
    return list(CXX_FLAGS) + (["-DSYNCTALK_WITH_CUDA"] if variant == "cuda" else list(CPU_FLAGS))


def extra_ldflags(variant: str) -> list[str]:
    # Links the same libgomp.so.1 torch already loaded (one OpenMP runtime, one thread pool).
    return [] if variant == "cuda" else ["-fopenmp"]


def extra_cuda_cflags(variant: str) -> list[str]:
    return list(NVCC_FLAGS) if variant == "cuda" else []


def include_dirs() -> list[str]:
    return [str(CSRC)]


def digest(variant: str) -> str:
    """Hash of everything that changes the binary: sources, headers, flags, archs, torch version."""
    import torch

    h = hashlib.sha256()
    for path in sorted([Path(s) for s in sources(variant)] + headers()):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    h.update(repr((extra_cflags(variant), extra_cuda_cflags(variant), extra_ldflags(variant))).encode())
    h.update(torch.__version__.encode())
    if variant == "cuda":
        h.update(cuda_arch_list().encode())
    return h.hexdigest()[:16]


def build_dir(variant: str) -> Path:
    """$SYNCTALK_KERNEL_CACHE or ~/.cache/synctalk/kernels, then <torch version>-<variant>-<hash>."""
    import torch

    root = os.environ.get("SYNCTALK_KERNEL_CACHE") or str(Path.home() / ".cache" / "synctalk" / "kernels")
    return Path(root) / f"{torch.__version__}-{variant}-{digest(variant)}"
