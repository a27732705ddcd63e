"""``synctalk sample``: writes the three files, and refuses bad options in one line without a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from gpu_worker.sample.truth import load_truth
from services.cli.main import cli
from shared.settings import Settings


@pytest.fixture
def env(settings: Settings) -> dict[str, str]:
    return {
        "SYNCTALK_MODEL_DIR": str(settings.model_dir),
        "SYNCTALK_MODEL_SOURCES": settings.model_sources,
        "SYNCTALK_MODEL_DOWNLOAD": "false",
        "SYNCTALK_DATA_DIR": str(settings.data_dir),
    }


def test_sample_command_writes_the_clip(tmp_path: Path, env: dict[str, str]) -> None:
    out = tmp_path / "clip"
    args = [
        "sample",
        "--out",
        str(out),
        "--seconds",
        "1",
        "--size",
        "96",
        "--seed",
        "2",
        "--text",
        "Hi there.",
    ]
    result = CliRunner().invoke(cli, args, env=env)
    assert result.exit_code == 0, result.output
    assert {p.name for p in out.iterdir()} == {"subject.mp4", "speech.wav", "truth.json"}
    truth = load_truth(out / "truth.json")
    assert truth.n_frames == 25 and truth.size == (96, 96) and truth.raw["seed"] == 2


@pytest.mark.parametrize(
    ("option", "value"),
    [("--size", "101"), ("--seconds", "0"), ("--voice", "festival"), ("--voice", "espeak-ng:--help")],
)
def test_bad_option_is_one_clear_line(tmp_path: Path, env: dict[str, str], option: str, value: str) -> None:
    result = CliRunner().invoke(cli, ["sample", "--out", str(tmp_path / "clip"), option, value], env=env)
    assert result.exit_code != 0
    assert "[sample_option]" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "clip").exists()
