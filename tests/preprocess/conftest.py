"""Tiny clips for the preprocessing tests, made once per session (helpers in preprocess_helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from preprocess_helpers import tiny_settings


@pytest.fixture(scope="session")
def tiny_sample(tmp_path_factory) -> Path:
    """A 4 s, 256 px sample subject (real face photo, known head motion, speech)."""
    from gpu_worker.sample import make_sample

    out = tmp_path_factory.mktemp("tiny_sample")
    make_sample(out / "s", seconds=4.0, size=256, seed=1, settings=tiny_settings(out))
    return out / "s"
