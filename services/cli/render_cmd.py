"""``synctalk render`` and ``synctalk dub``: speech tracks onto a trained subject, as finished videos.

Heavy imports (torch, the model, mediapipe) happen inside the commands so ``synctalk --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path

import click

from services.cli.progress import ProgressBar

MODE = click.option(
    "--mode",
    type=click.Choice(["fullframe", "portrait", "crop"]),
    default="fullframe",
    show_default=True,
    help="fullframe: pasted into the source video (its size and frame rate); portrait: the face blended "
    "into the real square crop; crop: the model's own square crop.",
)
START = click.option(
    "--start-frame", type=int, default=0, show_default=True, help="Subject frame (25 fps) the walk starts at."
)
NO_QC = click.option("--no-qc", is_flag=True, help="Skip the quality checks (no OUT.qc.json).")
NO_CAPTIONS = click.option(
    "--no-captions", is_flag=True, help="Write no captions (by default OUT.vtt and OUT.srt beside OUT.mp4)."
)
BURN_CAPTIONS = click.option(
    "--burn-captions", is_flag=True, help="Also draw the captions into the video (re-encodes it once more)."
)
LANGUAGE = click.option(
    "--language",
    default=None,
    metavar="CODE",
    help="The speech's language as a Whisper code (en, de, fr, ja, ...); default: detected.",
)


def _captions_mode(no_captions: bool, burn_captions: bool) -> str:
    if no_captions and burn_captions:
        raise click.UsageError("--no-captions and --burn-captions contradict each other")
    return "off" if no_captions else "burn" if burn_captions else "on"


def _summary(result) -> str:
    qc = result.qc
    flags = (
        ", ".join(
            f"{f} ({', '.join(qc['sync_failures'])})" if f == "low_sync" and qc.get("sync_failures") else f
            for f in qc.get("flags", [])
        )
        or "none"
    )
    corr = qc.get("mouth_envelope_corr_best")
    face = qc.get("face_share")
    parts = [
        f"{result.video}: {result.width}x{result.height} at {result.fps} fps, {result.frames} frames "
        f"({result.duration_s:.2f} s), {result.mode}, rendered in {result.seconds:.1f} s",
        f"  QC flags: {flags}"
        + (f"; face found in {face:.0%} of frames" if face is not None else "")
        + (f"; mouth/speech r {corr:.2f}" if corr is not None else ""),
    ]
    if result.qc_path:
        parts.append(f"  QC report: {result.qc_path}")
    if result.captions_vtt:
        captions = qc.get("captions") or {}
        p = captions.get("language_probability")
        lang = f" ({result.language}" + (f", detected with p {p:.2f}" if p is not None else "") + ")"
        parts.append(
            f"  captions: {result.captions_vtt}, {result.captions_srt.name}{lang if result.language else ''}"
        )
    return "\n".join(parts)


@click.command("render")
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--audio",
    "audios",
    multiple=True,
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Speech track (any audio file, or a video whose audio is used); repeat for several.",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(path_type=Path),
    help="The .mp4 to write (one track), or a folder (several tracks: one NAME.mp4 per track).",
)
@MODE
@START
@click.option(
    "--source",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The subject's source video (fullframe; default: the one its dataset was made from).",
)
@click.option(
    "--dataset",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="The subject's dataset, where it moved since training (default: the path the model records).",
)
@click.option("--device", default=None, help="cpu or cuda (default: cuda where available).")
@NO_QC
@NO_CAPTIONS
@BURN_CAPTIONS
@LANGUAGE
def render(
    model_dir: Path,
    audios: tuple[Path, ...],
    out: Path,
    mode: str,
    start_frame: int,
    source: Path | None,
    dataset: Path | None,
    device: str | None,
    no_qc: bool,
    no_captions: bool,
    burn_captions: bool,
    language: str | None,
) -> None:
    """Render speech tracks onto the trained subject in MODEL_DIR (the model is loaded once)."""
    from gpu_worker.render.options import RenderError, RenderOptions
    from gpu_worker.render.stage import Renderer
    from shared.settings import get_settings

    if len(audios) > 1 or out.is_dir() or not out.suffix:
        targets = [out / f"{a.stem}.mp4" for a in audios]
        if len(set(targets)) != len(targets):
            raise RenderError("two speech tracks have the same file name: their videos would collide")
    else:
        targets = [out]
    options = RenderOptions(
        mode=mode, start_frame=start_frame, qc=not no_qc, captions=_captions_mode(no_captions, burn_captions),
        language=language,
    )  # fmt: skip
    options.check()
    renderer = Renderer(model_dir, get_settings(), source=source, dataset=dataset, device=device)
    for audio, target in zip(audios, targets, strict=True):
        with ProgressBar() as bar:
            result = renderer.render(audio, target, options, bar)
        click.echo(_summary(result))


@click.command("dub")
@click.argument("video", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("audio", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="The .mp4 to write."
)
@click.option(
    "--profile",
    type=click.Choice(["tiny", "preview", "standard"]),
    default="preview",
    show_default=True,
    help="preview: CPU in minutes; standard: GPU, paper scale; tiny: a smoke run.",
)
@click.option(
    "--work",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder for the dataset and the model (default: OUT's name + .dub beside it); reruns reuse it.",
)
@MODE
@START
@click.option("--device", default=None, help="cpu or cuda (default: cuda where available).")
@NO_QC
@NO_CAPTIONS
@BURN_CAPTIONS
@LANGUAGE
def dub(
    video: Path,
    audio: Path,
    out: Path,
    profile: str,
    work: Path | None,
    mode: str,
    start_frame: int,
    device: str | None,
    no_qc: bool,
    no_captions: bool,
    burn_captions: bool,
    language: str | None,
) -> None:
    """Learn the person in VIDEO and make them say AUDIO: preprocess, train, render, in one command.

    A rerun reuses the finished stages (the dataset, the trained model) and renders again."""
    from gpu_worker.render.dub import dub as run
    from gpu_worker.render.options import RenderOptions
    from shared.settings import get_settings

    with ProgressBar() as bar:
        result = run(
            video, audio, out, get_settings(), profile=profile, work=work, device=device, progress=bar,
            options=RenderOptions(mode=mode, start_frame=start_frame, qc=not no_qc,
                                  captions=_captions_mode(no_captions, burn_captions), language=language),
        )  # fmt: skip
    click.echo(f"dataset: {result.dataset}\nmodel:   {result.model}")
    click.echo(_summary(result.render))
