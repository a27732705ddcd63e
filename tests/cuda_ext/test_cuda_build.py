"""Compile check of the CUDA kernels (no GPU needed). Slow: runs in CI (CI=true) or on request
(SYNCTALK_BUILD_CUDA_TEST=1), where nvcc is installed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cuda_ext import build_spec


def _cuda_home() -> str | None:
    home = os.environ.get("CUDA_HOME") or "/usr/local/cuda-13.0"
    return home if Path(home, "bin", "nvcc").exists() else None


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("CI") != "true" and os.environ.get("SYNCTALK_BUILD_CUDA_TEST") != "1",
    reason="CUDA compile check runs in CI or with SYNCTALK_BUILD_CUDA_TEST=1",
)
def test_cuda_kernels_compile_for_all_target_archs():
    home = _cuda_home()
    if home is None and shutil.which("nvcc") is None:
        pytest.skip("no CUDA toolkit")
    env = dict(
        os.environ, TORCH_CUDA_ARCH_LIST=os.environ.get("TORCH_CUDA_ARCH_LIST", build_spec.DEFAULT_CUDA_ARCHS)
    )
    if home:
        env["CUDA_HOME"] = home
    out = subprocess.run([sys.executable, "-m", "cuda_ext.build", "--cuda"], capture_output=True, text=True,
                         env=env, timeout=1800)  # fmt: skip
    assert out.returncode == 0, out.stderr[-4000:]
