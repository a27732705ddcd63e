"""``synctalk sample --out DIR``: make the sample subject (a talking clip of a real photo, with its truth)."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command()
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder to write subject.mp4, speech.wav and truth.json into.",
)
@click.option(
    "--seconds", default=12.0, show_default=True, type=float, help="Clip length (speech is cut or repeated)."
)
@click.option(
    "--size", default=512, show_default=True, type=int, help="Frame width and height in pixels (even)."
)
@click.option(
    "--seed",
    default=0,
    show_default=True,
    type=int,
    help="Chooses the text (without --text), the speaking rate, head motion and blinks.",
)
@click.option("--text", default=None, help="What the subject says (default: one of several texts, by seed).")
@click.option(
    "--voice",
    default="auto",
    show_default=True,
    help="auto (piper, else espeak-ng), piper, espeak-ng, or espeak-ng:VARIANT (e.g. en-us+f3, en-gb+m4): "
    "another speaker's audio to drive a model trained on the default voice.",
)
@click.option(
    "--check",
    is_flag=True,
    help="Afterwards run the face landmarker over the clip and print detection rate and correlations.",
)
def sample(
    out_dir: Path, seconds: float, size: int, seed: int, text: str | None, voice: str, check: bool
) -> None:
    """Write a talking clip of scikit-image's astronaut photo with known head pose, mouth and blinks.

    Different seeds or texts give different clips of the same person: train on one, and use another's
    speech as "new" audio with its video as the ground truth.
    """
    from tqdm import tqdm

    from gpu_worker.sample import make_sample

    bars: list[tqdm] = []  # made on the first report, so option errors print without an empty bar

    def progress(step: str, fraction: float, message: str) -> None:
        if not bars:
            bars.append(tqdm(total=100, leave=False, bar_format="{percentage:3.0f}%|{bar:20}| {desc}"))
        bars[0].n = round(100 * fraction)
        bars[0].set_description_str(f"{step}: {message}")

    try:
        result = make_sample(
            out_dir, seconds=seconds, size=size, seed=seed, text=text, voice=voice, progress=progress
        )
    finally:
        for bar in bars:
            bar.close()
    click.echo(
        f"wrote {result.video}, {result.speech} ({result.sample_rate} Hz), {result.truth}: "
        f"{result.n_frames} frames, {result.seconds:g} s"
    )
    if check:
        from gpu_worker.sample.measure import check_sample

        click.echo(json.dumps(check_sample(result.out_dir).to_dict(), indent=2))
