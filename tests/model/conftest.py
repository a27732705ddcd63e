"""Fixtures of the model tests: a tiny synthetic dataset (built once per session) and few CPU threads."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from synthetic import make_synthetic_dataset  # noqa: E402


@pytest.fixture(autouse=True)
def _few_threads():
    # 2 cores shared by the whole team: keep each test on one thread
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory) -> Path:
    return make_synthetic_dataset(tmp_path_factory.mktemp("ds") / "subject", n_frames=44, res=48, seed=0)


@pytest.fixture(scope="session")
def synthetic_dataset_b(tmp_path_factory) -> Path:
    """A second clip of the same 'person' with other speech."""
    return make_synthetic_dataset(tmp_path_factory.mktemp("dsb") / "subject_b", n_frames=44, res=48, seed=5)
