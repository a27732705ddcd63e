"""``synctalk preprocess VIDEO --out DIR``: turn a subject video into a training dataset."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command()
@click.argument("video", type=click.Path(path_type=Path))
@click.option(
    "--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Dataset folder to write."
)
@click.option("--resolution", default=512, show_default=True, help="Side of the square crop, in pixels.")
@click.option(
    "--audio-encoder",
    type=click.Choice(["whisper", "mel", "ave", "hubert"]),
    default=None,
    help="Per-frame audio features: Whisper's encoder (speaker-independent; the model files), mel "
    "windows (no weights), an AVE checkpoint, or HuBERT weights. Default: mel for a new dataset, "
    "the existing dataset's encoder when OUT already holds one.",
)
@click.option(
    "--ave-checkpoint",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="AVE audio tower checkpoint (for --audio-encoder ave; without it, mel is used with a warning).",
)
def preprocess(
    video: Path, out_dir: Path, resolution: int, audio_encoder: str | None, ave_checkpoint: Path | None
) -> None:
    """Normalize, crop, analyse the face, parse, stabilize the head pose and extract audio features.

    Reruns skip the steps whose inputs and settings did not change; an interrupted run resumes.
    """
    from gpu_worker.preprocess import run_preprocess
    from services.cli.progress import ProgressBar
    from shared.settings import get_settings

    with ProgressBar(width=60) as bar:
        out = run_preprocess(
            video, out_dir, get_settings(), resolution=resolution, audio_encoder=audio_encoder,
            ave_checkpoint=ave_checkpoint, progress=bar,
        )  # fmt: skip
    report = json.loads((out / "report.json").read_text())
    pose = report["pose"]
    click.echo(f"dataset: {out}")
    click.echo(
        f"frames {report['frame_count']} (usable {report['usable_frames']}), face detected in "
        f"{report['face_detection_ratio']:.0%}; reprojection {pose['landmark_reprojection_px_before']:.2f} -> "
        f"{pose['landmark_reprojection_px_after']:.2f} px; jitter {pose['rotation_jitter_deg_before']:.3f} -> "
        f"{pose['rotation_jitter_deg_after']:.3f} deg"
    )
    if report.get("reused_steps"):
        click.echo(f"unchanged steps kept from the earlier run: {', '.join(report['reused_steps'])}")
    for w in report["warnings"]:
        click.echo(f"warning: {w}")
