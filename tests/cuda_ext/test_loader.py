"""Backend selection, the lazy loader and the build description."""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest
import torch
from kernel_helpers import kernels

import cuda_ext
from cuda_ext import build_spec, loader
from cuda_ext.errors import KernelBuildError


def test_import_never_compiles():
    code = "import sys, cuda_ext; print('torch.utils.cpp_extension' in sys.modules, len(cuda_ext.loader._loaded))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "0"]


def test_backend_selection(cpp):
    with kernels("torch"):
        assert cuda_ext.backend_name("cpu") == "torch"
    with kernels(""):
        assert cuda_ext.backend_name("cpu") == "cpp"
        assert cuda_ext.backend_name() == "cpp"


def test_failed_build_falls_back_to_reference_with_one_warning(monkeypatch):
    monkeypatch.setattr(loader, "_loaded", {})

    def broken(variant, verbose=False):
        raise KernelBuildError("compiler exploded")

    monkeypatch.setattr(loader, "build", broken)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with kernels(""):
            assert loader.get("cpu") is None
            assert loader.get("cpu") is None  # cached: no second warning
            assert cuda_ext.backend_name("cpu") == "torch"
            near, far = cuda_ext.near_far_from_aabb(torch.zeros(1, 3), torch.ones(1, 3), (1, 1, 1, 2, 2, 2))
    assert [str(w.message) for w in caught if "compiler exploded" in str(w.message)].__len__() == 1
    assert near.item() == pytest.approx(1.0) and far.item() == pytest.approx(2.0)


def test_build_dir_tracks_sources_flags_and_archs(monkeypatch, tmp_path):
    monkeypatch.setenv("SYNCTALK_KERNEL_CACHE", str(tmp_path))
    cpu, cuda = build_spec.build_dir("cpu"), build_spec.build_dir("cuda")
    assert cpu.parent == tmp_path and cpu.name.startswith(torch.__version__) and cpu != cuda
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "9.0")
    assert build_spec.build_dir("cuda") != cuda
    assert build_spec.build_dir("cpu") == cpu
    monkeypatch.setattr(build_spec, "CXX_FLAGS", [*build_spec.CXX_FLAGS, "-DX"])
    assert build_spec.build_dir("cpu") != cpu
    assert all(p.endswith((".cpp", ".cu")) for p in build_spec.sources("cuda") + build_spec.sources("cpu"))


def test_build_cli_is_a_no_op_when_cached(cpp):
    out = subprocess.run([sys.executable, "-m", "cuda_ext.build", "--cpu"], capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "cpu kernels ready" in out.stdout
