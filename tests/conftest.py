"""Fixtures shared by the whole suite: isolated settings and a model directory that needs no download."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shared.settings import Settings

REPO = Path(__file__).resolve().parents[1]
SHARED_MODELS = REPO.parent / "shared" / "models"


def _model_sources() -> str:
    env = os.environ.get("SYNCTALK_MODEL_SOURCES", "")
    return env or (str(SHARED_MODELS) if SHARED_MODELS.is_dir() else "")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings with every writable path under the test's own temporary folder."""
    return Settings(
        environment="test",
        data_dir=tmp_path / "data",
        model_dir=tmp_path / "models",
        model_sources=_model_sources(),
        model_download=False,
    )
