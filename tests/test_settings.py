"""Settings: embedded defaults, environment overrides, production refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from shared.settings import Settings


def test_embedded_defaults_live_under_data_dir(tmp_path: Path, monkeypatch) -> None:
    for var in ("SYNCTALK_DATABASE_URL", "SYNCTALK_BROKER_URL", "SYNCTALK_STORAGE_URL", "SYNCTALK_DATA_DIR"):
        monkeypatch.delenv(var, raising=False)
    s = Settings(data_dir=tmp_path)
    assert s.resolved_database_url == f"sqlite:///{tmp_path / 'synctalk.db'}"
    assert s.resolved_broker_url.startswith("sqla+sqlite:///") and str(tmp_path) in s.resolved_broker_url
    assert s.resolved_storage_url == f"file://{tmp_path / 'storage'}"


def test_environment_overrides(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SYNCTALK_DATABASE_URL", "postgresql+psycopg2://u@db:5432/synctalk")
    monkeypatch.setenv("SYNCTALK_MODEL_SOURCES", f"{tmp_path}/a:{tmp_path}/b")
    monkeypatch.setenv("SYNCTALK_MEDIA_MAX_WIDTH", "640")
    monkeypatch.setenv("SYNCTALK_KERNELS", "torch")
    s = Settings()
    assert s.resolved_database_url == "postgresql+psycopg2://u@db:5432/synctalk"
    assert s.model_source_dirs == [tmp_path / "a", tmp_path / "b"]
    assert s.media_max_width == 640 and s.kernels == "torch"


def test_bad_values_are_rejected(monkeypatch) -> None:
    monkeypatch.setenv("SYNCTALK_KERNELS", "fast-please")
    with pytest.raises(ValidationError):
        Settings()


def test_production_refuses_the_default_secret() -> None:
    with pytest.raises(ValidationError, match="SECRET_KEY"):
        Settings(environment="production")
    assert Settings(environment="production", secret_key="x" * 40).secret_key == "x" * 40


def test_every_setting_is_documented_in_the_readme() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    missing = [
        f"SYNCTALK_{name.upper()}"
        for name in Settings.model_fields
        if f"`SYNCTALK_{name.upper()}`" not in readme
    ]
    assert not missing, f"settings missing from README.md's table: {missing}"
