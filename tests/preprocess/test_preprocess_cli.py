"""``synctalk preprocess``: a dataset and its summary; absent encoder weights are one line, nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from preprocess_helpers import tiny_settings

from services.cli.main import cli
from shared.settings import get_settings


@pytest.fixture
def env(tmp_path: Path):
    s = tiny_settings(tmp_path)
    get_settings.cache_clear()
    yield {
        "SYNCTALK_ENVIRONMENT": "test",
        "SYNCTALK_MODEL_DIR": str(s.model_dir),
        "SYNCTALK_MODEL_SOURCES": s.model_sources,
        "SYNCTALK_MODEL_DOWNLOAD": "false",
        "SYNCTALK_DATA_DIR": str(s.data_dir),
        "SYNCTALK_MIN_TRAIN_SECONDS": "2",
    }
    get_settings.cache_clear()


def test_preprocess_command_writes_a_dataset_then_reuses_it(tiny_sample, tmp_path, env):
    out = tmp_path / "ds"
    args = ["preprocess", str(tiny_sample / "subject.mp4"), "--out", str(out), "--resolution", "64"]
    result = CliRunner().invoke(cli, args, env=env)
    assert result.exit_code == 0, result.output
    assert (out / "manifest.json").is_file() and f"dataset: {out}" in result.output
    assert "jitter" in result.output and "unchanged steps" not in result.output
    # Encoder change: ave without a checkpoint falls back to mel (a warning); only audio is redone.
    get_settings.cache_clear()
    result = CliRunner().invoke(cli, args + ["--audio-encoder", "ave"], env=env)
    assert result.exit_code == 0, result.output
    assert "unchanged steps kept from the earlier run: track, analyze" in result.output
    assert "warning:" in result.output and "mel" in result.output


def test_missing_hubert_weights_are_one_line_before_any_work(tiny_sample, tmp_path, env):
    out = tmp_path / "ds"
    args = ["preprocess", str(tiny_sample / "subject.mp4"), "--out", str(out), "--audio-encoder", "hubert"]
    result = CliRunner().invoke(cli, args, env=env)
    assert result.exit_code != 0
    assert "hubert-large-ls960-ft" in result.output and "Traceback" not in result.output
    assert result.output.strip().count("\n") == 0  # one line, no progress bar
    assert not out.exists() and not list(tmp_path.glob(".ds*"))
