"""The train / eval / train-ave commands: they run, report, and turn expected failures into one line."""

from __future__ import annotations

import json

from click.testing import CliRunner

from services.cli.main import cli


def test_train_then_eval_then_resume_errors(synthetic_dataset, tmp_path):
    runner = CliRunner()
    out = tmp_path / "m"
    args = ["train", str(synthetic_dataset), "--out", str(out), "--profile", "tiny", "--stages", "head,torso"]
    res = runner.invoke(cli, [*args, "--steps-scale", "0.1", "--speaker-augment", "0.1"])
    assert res.exit_code == 0, res.output
    assert "trained head, torso to step 9" in res.output  # (60 + 30) x 0.1
    saved = json.loads((out / "config.json").read_text())["config"]
    assert saved["stages"] == ["head", "torso"] and saved["data"]["audio_warp"] == 0.1

    res = runner.invoke(cli, ["eval", str(out), "--max-frames", "2", "--out", str(tmp_path / "ev")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["self_driven"]["frames"] == 2

    res = runner.invoke(cli, [*args, "--steps-scale", "0.1"])  # same folder, no --resume
    assert res.exit_code == 1 and "[training_failed]" in res.output and "Traceback" not in res.output

    (out / "checkpoints" / "last.pt").write_bytes(b"garbage")
    res = runner.invoke(cli, [*args, "--resume"])
    assert res.exit_code == 1 and "[checkpoint_invalid]" in res.output

    # LPIPS asked for where its weights are not (no lpips folder in the model directory): one line,
    # before any training
    lips = [*args[:2], "--out", str(tmp_path / "l"), "--profile", "tiny", "--patch-loss", "lpips"]
    res = runner.invoke(cli, lips)
    assert res.exit_code == 1 and "[training_failed]" in res.output and "patch_loss is 'lpips'" in res.output
    assert not (tmp_path / "l" / "checkpoints").exists()

    res = runner.invoke(cli, [*args[:2], "--out", str(tmp_path / "w"), "--speaker-augment", "2"])
    assert res.exit_code == 2 and "0<=x<=0.3" in res.output and not (tmp_path / "w").exists()


def test_train_ave_reports_accuracy_and_offset(synthetic_dataset, tmp_path):
    res = CliRunner().invoke(
        cli,
        [
            "train-ave",
            str(synthetic_dataset),
            "--out",
            str(tmp_path / "ave.pt"),
            "--steps",
            "3",
            "--batch-size",
            "4",
            "--width",
            "4",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "held-out sync accuracy" in res.output and "found offset" in res.output
    assert (tmp_path / "ave.pt").is_file()
