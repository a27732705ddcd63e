"""``synctalk train-ave``, ``synctalk train`` and ``synctalk eval``: the model's stage functions on the CLI.

Heavy imports (torch, the model) happen inside the commands so ``synctalk --help`` stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path

import click


def _bar_progress(total: int = 1000):
    from tqdm import tqdm

    bar = tqdm(total=total, unit="‰", bar_format="{l_bar}{bar}| {postfix}")

    def progress(step: str, fraction: float, message: str) -> None:
        bar.set_description(step)
        bar.n = int(fraction * total)
        bar.set_postfix_str(message)
        bar.refresh()

    return bar, progress


@click.command("train-ave")
@click.argument(
    "datasets", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path)
)
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Checkpoint to write (ave.pt).",
)
@click.option("--steps", default=3000, show_default=True, help="Optimizer steps.")
@click.option("--batch-size", default=64, show_default=True, help="Pairs per step.")
@click.option("--width", default=32, show_default=True, help="Channels of the towers' first conv.")
@click.option("--device", default=None, help="cpu or cuda (default: cuda where available).")
def train_ave(
    datasets: tuple[Path, ...], out: Path, steps: int, batch_size: int, width: int, device: str | None
) -> None:
    """Train the AVE audio/lip towers (sync) on one or many preprocessed DATASETS."""
    from gpu_worker.ave.towers import AVEConfig
    from gpu_worker.ave.train import AVETrainConfig
    from gpu_worker.ave.train import train_ave as run

    cfg = AVETrainConfig(steps=steps, batch_size=batch_size, towers=AVEConfig(width=width))
    bar, progress = _bar_progress()
    try:
        result = run(list(datasets), out, cfg, device=device, progress=progress)
    finally:
        bar.close()
    click.echo(
        f"AVE written to {result.path}: held-out sync accuracy {result.heldout_accuracy:.3f} "
        f"({result.heldout_pairs} pairs); audio delayed by {result.applied_offset} frames -> found offset "
        f"{result.found_offset} (confidence {result.confidence:.3f}); loss {result.loss_first:.3f} -> "
        f"{result.loss_last:.3f} in {result.seconds:.0f} s"
    )


@click.command("train")
@click.argument("dataset", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Model folder."
)
@click.option(
    "--profile",
    type=click.Choice(["tiny", "preview", "standard"]),
    default="preview",
    show_default=True,
    help="preview: CPU in minutes at 128 px; standard: GPU, paper scale; tiny: CI.",
)
@click.option(
    "--stages", default="head,lips,torso", show_default=True, help="Comma list of head, lips, torso."
)
@click.option("--resume", is_flag=True, help="Continue from MODEL_DIR/checkpoints/last.pt.")
@click.option(
    "--steps-scale", default=1.0, show_default=True, help="Multiply every stage's steps (quick tries)."
)
@click.option("--device", default=None, help="cpu or cuda (default: cuda where available).")
@click.option(
    "--patch-loss",
    type=click.Choice(["auto", "lpips", "structural"]),
    default="auto",
    show_default=True,
    help="Lips-stage patch loss: LPIPS where its weights are in the model directory (auto), or 1 - SSIM.",
)
@click.option(
    "--speaker-augment",
    type=click.FloatRange(0.0, 0.3),
    default=None,
    help="Scale each training window's formants by up to exp(+-W) (mel features): for a subject that "
    "other voices will dub. Off in every profile: it cost same-voice lip sync on the sample (MODEL.md).",
)
def train(
    dataset: Path,
    out: Path,
    profile: str,
    stages: str,
    resume: bool,
    steps_scale: float,
    device: str | None,
    patch_loss: str,
    speaker_augment: float | None,
) -> None:
    """Train the SyncTalk model on a preprocessed DATASET into a model folder."""
    from gpu_worker.model.config import profile_config, scale_steps
    from gpu_worker.model.trainer import train_model
    from shared.settings import get_settings

    cfg = profile_config(profile, stages)
    cfg.loss.patch_loss = patch_loss
    if speaker_augment is not None:
        cfg.data.audio_warp = speaker_augment
    scale_steps(cfg, steps_scale)
    bar, progress = _bar_progress()
    try:
        result = train_model(
            dataset, out, cfg, resume=resume, device=device, progress=progress,
            weights_dir=get_settings().model_dir,
        )  # fmt: skip
    finally:
        bar.close()
    last = result.history[-1] if result.history else {}
    click.echo(
        f"trained {', '.join(result.stages_done) or 'nothing'} to step {result.global_step} in {result.seconds:.0f} s "
        f"(last batch PSNR {last.get('psnr', float('nan')):.2f} dB); model in {out}"
    )


@click.command("eval")
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--audio", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="New speech to render."
)
@click.option(
    "--reference",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="A second preprocessed clip: its audio drives the model, its lips are the truth.",
)
@click.option(
    "--truth-video",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The video that goes with --audio: its lip gap (MediaPipe) is the truth.",
)
@click.option(
    "--dataset",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Override the training dataset path.",
)
@click.option(
    "--ave",
    "ave",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="AVE checkpoint (default MODEL_DIR/ave.pt).",
)
@click.option("--max-frames", type=int, default=None, help="Evaluate at most this many frames per part.")
@click.option(
    "--out",
    "out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Output folder (default MODEL_DIR/eval).",
)
@click.option("--device", default=None, help="cpu or cuda.")
def evaluate(model_dir: Path, audio, reference, truth_video, dataset, ave, max_frames, out, device) -> None:
    """Evaluate a trained model: PSNR/SSIM (against gt/ and the real frames), LMD and sync on validation
    frames; sync and lip motion on new audio. Writes OUT/metrics.json and previews (docs/MODEL.md)."""
    from gpu_worker.model.evaluate import evaluate_model
    from shared.settings import get_settings

    bar, progress = _bar_progress()
    try:
        result = evaluate_model(
            model_dir, get_settings(), dataset=dataset, audio=audio, reference=reference, truth_video=truth_video,
            ave_checkpoint=ave, out_dir=out, max_frames=max_frames, device=device, progress=progress,
        )  # fmt: skip
    finally:
        bar.close()
    click.echo(json.dumps(result, indent=2))
