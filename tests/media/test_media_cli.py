"""``synctalk probe FILE`` prints the probe as JSON; refused files give one line with the error code."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from services.cli.main import cli


def test_probe_prints_json(clip_30fps: Path) -> None:
    res = CliRunner().invoke(cli, ["probe", str(clip_30fps)])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["video"]["width"] == 64 and data["video"]["fps"] == 30
    assert data["audio"]["sample_rate"] == 44100


def test_probe_audio_only_flag(audio_48k: Path) -> None:
    runner = CliRunner()
    refused = runner.invoke(cli, ["probe", str(audio_48k)])
    assert refused.exit_code != 0 and "[no_video_stream]" in refused.output
    ok = runner.invoke(cli, ["probe", "--audio-only", str(audio_48k)])
    assert ok.exit_code == 0 and json.loads(ok.output)["video"] is None


def test_probe_refused_file_is_one_line(tmp_path: Path) -> None:
    empty = tmp_path / "empty.mp4"
    empty.touch()
    res = CliRunner().invoke(cli, ["probe", str(empty)])
    assert res.exit_code != 0
    assert "[empty_file]" in res.output and "Traceback" not in res.output
