"""Fixtures of the kernel tests. Needs only torch, numpy and pytest (no project settings), so the GPU
check runs with:  python3 -m pytest -p no:cacheprovider --confcutdir=tests/cuda_ext -m gpu tests/cuda_ext
"""

from __future__ import annotations

import os

import pytest
import torch

from cuda_ext import loader


@pytest.fixture(scope="session")
def cpp():
    """The C++ extension; fails under CI (where `make test` built it), skips elsewhere if it cannot build."""
    os.environ.pop("SYNCTALK_KERNELS", None)
    mod = loader.get("cpu")
    if mod is None:
        if os.environ.get("CI") == "true":
            pytest.fail("the C++ kernels did not build (run `python -m cuda_ext.build --cpu -v`)")
        pytest.skip("C++ kernels unavailable")
    return mod


@pytest.fixture(scope="session")
def cuda():
    """The CUDA extension on a GPU host (a build failure there fails the test, it does not skip)."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    os.environ.pop("SYNCTALK_KERNELS", None)
    return loader.build("cuda")
