"""Fixtures shared by the whole suite: isolated settings and a model directory that needs no download."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shared.settings import Settings

REPO = Path(__file__).resolve().parents[1]
SHARED_MODELS = REPO.parent / "shared" / "models"


def _model_sources() -> str:
    """Local folders tests copy model files from (never the network): SYNCTALK_MODEL_SOURCES, the
    ../shared/models folder when it is beside the checkout, and the user's model dir that
    `make test` filled with `synctalk models fetch` (so the suite does not depend on ../shared)."""
    folders = [p for p in os.environ.get("SYNCTALK_MODEL_SOURCES", "").split(os.pathsep) if p]
    if SHARED_MODELS.is_dir():
        folders.append(str(SHARED_MODELS))
    folders.append(str(Settings().model_dir))
    return os.pathsep.join(dict.fromkeys(folders))


# Every test (and helper that builds its own Settings from the environment) sees the same local sources.
os.environ["SYNCTALK_MODEL_SOURCES"] = _model_sources()


def isolated_settings(root: Path) -> Settings:
    """Settings with every writable path under ``root``; model files come from local sources only."""
    return Settings(
        environment="test",
        data_dir=root / "data",
        model_dir=root / "models",
        model_sources=_model_sources(),
        model_download=False,
    )


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings with every writable path under the test's own temporary folder."""
    return isolated_settings(tmp_path)


@pytest.fixture(scope="session")
def sample_subject(tmp_path_factory):
    """A 6 s, 256 px sample clip (seed 0), made once per session: .video, .speech, .truth, .n_frames."""
    from gpu_worker.sample import make_sample

    root = tmp_path_factory.mktemp("sample_subject")
    return make_sample(root / "clip", seconds=6.0, size=256, seed=0, settings=isolated_settings(root))


@pytest.fixture(scope="session")
def sample_subject_b(tmp_path_factory):
    """A second clip of the same person (seed 1): its audio is "new", its video the ground truth for it."""
    from gpu_worker.sample import make_sample

    root = tmp_path_factory.mktemp("sample_subject_b")
    return make_sample(root / "clip_b", seconds=6.0, size=256, seed=1, settings=isolated_settings(root))
