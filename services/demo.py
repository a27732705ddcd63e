"""`make demo`: the pipeline end to end on the embedded default, saying what it produced.

sample subject (two clips of one person) -> dataset -> trained model -> metrics on the validation frames
and on the second clip's "new" audio -> a dub: the subject saying the new speech, pasted back into its
own full frame, with its quality checks. Every step is the same stage function the workers call; reruns
reuse finished steps (the dataset and model stages skip or resume their own work).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from shared.settings import get_settings


def _step(title: str) -> float:
    click.secho(f"\n== {title}", bold=True)
    return time.perf_counter()


def _progress(step: str, fraction: float, message: str) -> None:
    click.echo(f"\r  {step:<18} {fraction * 100:5.1f}%  {message[:70]:<70}", nl=False)


@click.command()
@click.option(
    "--out", "out_dir", type=click.Path(path_type=Path), default=Path("demo-output"), show_default=True
)
@click.option("--seconds", type=float, default=20.0, show_default=True, help="Length of the training clip.")
@click.option("--size", type=int, default=256, show_default=True, help="Frame size of the sample clips.")
@click.option(
    "--profile", default="preview", show_default=True, help="Training profile (tiny for a smoke run)."
)
@click.option(
    "--eval-frames",
    type=int,
    default=100,
    show_default=True,
    help="Frames rendered per part of the evaluation (validation, new audio); 0 renders all.",
)
def main(out_dir: Path, seconds: float, size: int, profile: str, eval_frames: int) -> None:
    """Run sample -> preprocess -> train -> eval -> render and print where each result is."""
    from gpu_worker.model.evaluate import evaluate
    from gpu_worker.model.trainer import train
    from gpu_worker.preprocess import run_preprocess
    from gpu_worker.render.options import RenderOptions
    from gpu_worker.render.stage import render
    from gpu_worker.sample import make_sample

    settings = get_settings()
    out_dir = out_dir.absolute()
    out_dir.mkdir(parents=True, exist_ok=True)
    produced: dict[str, Path] = {}
    started = time.perf_counter()

    t = _step("1/5 sample subject: a real photo animated by offline speech")
    clip = out_dir / "sample"
    if not (clip / "truth.json").exists():
        make_sample(clip, seconds=seconds, size=size, seed=0, settings=settings, progress=_progress)
    new_audio = out_dir / "sample_new_audio"
    if not (new_audio / "truth.json").exists():
        make_sample(new_audio, seconds=10.0, size=size, seed=1, settings=settings, progress=_progress)
    produced["training clip"] = clip / "subject.mp4"
    produced["new speech + its ground truth"] = new_audio / "subject.mp4"
    click.echo(f"\n  done in {time.perf_counter() - t:.1f} s")

    t = _step("2/5 preprocess: face analysis, parsing, Head-Sync Stabilizer, audio features")
    dataset = run_preprocess(
        clip / "subject.mp4", out_dir / "dataset", settings, resolution=size, progress=_progress
    )
    produced["dataset"] = dataset
    report = json.loads((dataset / "report.json").read_text())
    click.echo(
        f"\n  done in {time.perf_counter() - t:.1f} s; face found in "
        f"{report.get('face_detection_ratio', float('nan')) * 100:.1f}% of frames"
    )

    t = _step(f"3/5 train: head, lips and torso stages ({profile} profile)")
    model_dir = out_dir / "model"
    train(dataset, model_dir, profile=profile, resume=True, settings=settings, progress=_progress)
    produced["model"] = model_dir
    click.echo(f"\n  done in {time.perf_counter() - t:.1f} s")

    t = _step("4/5 evaluate: validation frames and the new audio")
    metrics_path = evaluate(
        model_dir,
        audio=new_audio / "speech.wav",
        truth_video=new_audio / "subject.mp4",
        settings=settings,
        progress=_progress,
        max_frames=eval_frames or None,
    )
    produced["metrics"] = metrics_path
    metrics = json.loads(Path(metrics_path).read_text())
    click.echo(f"\n  done in {time.perf_counter() - t:.1f} s")

    t = _step("5/5 dub: the subject says the new speech, in its own full frame")
    dubbed = render(
        model_dir, new_audio / "speech.wav", out_dir / "dub.mp4", RenderOptions(mode="fullframe"), settings,
        _progress, source=clip / "subject.mp4",
    )  # fmt: skip
    produced["dubbed video (fullframe)"] = dubbed.video
    produced["its quality checks"] = dubbed.qc_path
    click.echo(
        f"\n  done in {time.perf_counter() - t:.1f} s: {dubbed.frames} frames at {dubbed.fps} fps, "
        f"{dubbed.width}x{dubbed.height}"
    )

    click.secho(f"\nDemo finished in {(time.perf_counter() - started) / 60:.1f} min. Results:", bold=True)
    for label, path in produced.items():
        click.echo(f"  {label:<32} {path}")
    click.echo("  metrics: " + json.dumps(_headline(metrics)))
    qc = dubbed.qc
    click.echo(
        "  dub QC: "
        + json.dumps(
            {
                "flags": qc.get("flags"),
                "face_share": qc.get("face_share"),
                "mouth_envelope_corr_best": _round(qc.get("mouth_envelope_corr_best")),
                "sync_confidence": _round((qc.get("sync") or {}).get("confidence")),
            }
        )
    )


def _round(v: float | None) -> float | None:
    return None if v is None else round(float(v), 3)


def _headline(metrics: dict) -> dict:
    """The few numbers worth printing (the full set is in metrics.json)."""
    keys = (
        "psnr",
        "psnr_portrait",
        "ssim",
        "lmd",
        "sync_confidence",
        "mouth_envelope_corr",
        "lip_gap_corr_truth",
    )
    flat: dict = {}
    for section, values in metrics.items():
        if isinstance(values, dict):
            for k, v in values.items():
                if k in keys and isinstance(v, int | float):
                    flat[f"{section}.{k}"] = round(float(v), 3)
    return flat


if __name__ == "__main__":
    main()
