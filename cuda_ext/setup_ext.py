"""Ahead-of-time build of the prebuilt modules cuda_ext._C_cpu / cuda_ext._C_cuda from build_spec.

    python cuda_ext/setup_ext.py build_ext --inplace          # CPU + CUDA (where CUDA_HOME has nvcc)
    BUILD_NO_CUDA=1 python cuda_ext/setup_ext.py build_ext --inplace   # CPU kernels only

A packaging setup.py can call ext_modules() / cmdclass() the same way. The loader imports these
modules first; without them it JIT-builds the same sources with the same flags (loader.py).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cuda_ext import build_spec  # noqa: E402


def want_cuda() -> bool:
    if os.environ.get("BUILD_NO_CUDA") == "1":
        return False
    from torch.utils.cpp_extension import CUDA_HOME

    return CUDA_HOME is not None and Path(CUDA_HOME, "bin", "nvcc").exists()


def ext_modules() -> list:
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    rel = Path(build_spec.PACKAGE_DIR).parent

    def srcs(variant: str) -> list[str]:
        return [str(Path(s).relative_to(rel)) for s in build_spec.sources(variant)]

    mods = [
        CppExtension(
            "cuda_ext._C_cpu",
            srcs("cpu"),
            include_dirs=build_spec.include_dirs(),
            extra_compile_args={"cxx": build_spec.extra_cflags("cpu")},
            extra_link_args=build_spec.extra_ldflags("cpu"),
        )
    ]
    if want_cuda():
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", build_spec.cuda_arch_list())
        mods.append(
            CUDAExtension(
                "cuda_ext._C_cuda",
                srcs("cuda"),
                include_dirs=build_spec.include_dirs(),
                extra_compile_args={
                    "cxx": build_spec.extra_cflags("cuda"),
                    "nvcc": build_spec.extra_cuda_cflags("cuda"),
                },
            )
        )
    return mods


def cmdclass() -> dict:
    from torch.utils.cpp_extension import BuildExtension

    return {"build_ext": BuildExtension}


if __name__ == "__main__":
    from setuptools import setup

    os.chdir(build_spec.PACKAGE_DIR.parent)
    setup(name="synctalk-cuda-ext", ext_modules=ext_modules(), cmdclass=cmdclass(), script_args=sys.argv[1:])
