"""Render stage speed and memory: frames per second end to end and per part, into a 720p source.

    python bench/render.py MODEL_DIR [--audio WAV] [--seconds 20] [--source-size WxH] [--mode M] [--device cuda]
    python bench/render.py MODEL_DIR --memory-minutes 10     # RSS over a 10-minute track (use a tiny model)

The subject's own source is usually small (the sample is 256 px); to measure paste-back and encoding at
720p, the source is enlarged 2x onto a 1280x720 canvas and the dataset's crop moved with it (a copy of
the dataset's manifest, the images linked). Prints ms per frame for: audio (decode + features + codes),
head (the NeRF), source (decoding the source frame), compose (blend + paste-back), encode (writing to the
encoder; ffmpeg encodes in its own process, its CPU time is printed apart), qc (landmarks per frame).
Record figures in docs/BENCHMARKS.md with `uptime`'s load.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _enlarged_subject(model_dir: Path, work: Path, size: tuple[int, int], scale: int) -> tuple[Path, Path]:
    """A 720p source made from the subject's (scaled ``scale`` x, centred) and a dataset copy whose crop
    points into it. Returns (dataset, source)."""
    from gpu_worker.media.binaries import ffmpeg_exe
    from gpu_worker.model.loading import load_model

    ds = load_model(model_dir, "cpu").dataset
    manifest = json.loads((ds / "manifest.json").read_text())
    crop, src = manifest["crop"], Path(manifest["source_probe"]["path"])
    w, h = size
    sw, sh = crop["source_width"] * scale, crop["source_height"] * scale
    px, py = (w - sw) // 2, (h - sh) // 2
    source = work / "source_720p.mp4"
    subprocess.run(
        [ffmpeg_exe(), "-v", "error", "-y", "-i", str(src), "-vf", f"scale={sw}:{sh},pad={w}:{h}:{px}:{py}",
         "-c:v", "libx264", "-preset", "veryfast", "-crf", "18", "-c:a", "copy", str(source)],
        check=True,
    )  # fmt: skip
    copy = work / "dataset"  # the dataset's files linked, its manifest rewritten
    copy.mkdir()
    for entry in ds.iterdir():
        if entry.name != "manifest.json":
            (copy / entry.name).symlink_to(entry)
    crop.update(
        source_width=w, source_height=h, x0=px + crop["x0"] * scale, y0=py + crop["y0"] * scale,
        size=crop["size"] * scale,
    )  # fmt: skip
    crop.pop("matrix_crop_to_source", None)
    manifest["source_probe"] = {"path": str(source)}
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy, source


def _speech(work: Path, seconds: float, audio: Path | None) -> Path:
    from gpu_worker.media.binaries import ffmpeg_exe

    out = work / "speech.wav"
    src = (
        ["-stream_loop", "-1", "-i", str(audio)] if audio else ["-f", "lavfi", "-i", "anoisesrc=a=0.1:c=pink"]
    )
    subprocess.run(
        [ffmpeg_exe(), "-v", "error", "-y", *src, "-t", str(seconds), "-ac", "1", "-ar", "16000", str(out)],
        check=True,
    )
    return out


@click.command()
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--audio", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None)
@click.option("--seconds", type=float, default=20.0, show_default=True)
@click.option("--source-size", default="1280x720", show_default=True)
@click.option("--scale", type=int, default=2, show_default=True, help="Enlargement of the subject's source.")
@click.option("--mode", type=click.Choice(["fullframe", "portrait", "crop"]), default="fullframe")
@click.option("--threads", type=int, default=2, show_default=True, help="torch threads.")
@click.option("--device", default=None, help="cpu or cuda (default: cuda where available).")
@click.option("--no-qc", is_flag=True)
@click.option("--memory-minutes", type=float, default=0.0, help="Also render this long a track, RSS sampled.")
def main(model_dir, audio, seconds, source_size, scale, mode, threads, device, no_qc, memory_minutes) -> None:
    import torch

    from gpu_worker.render.options import RenderOptions
    from gpu_worker.render.stage import Renderer
    from shared.settings import get_settings

    torch.set_num_threads(threads)
    click.echo(f"load: {os.getloadavg()[0]:.2f} (1 min); torch {torch.__version__}, {threads} threads")
    w, h = (int(v) for v in source_size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        dataset, source = _enlarged_subject(model_dir, work, (w, h), scale)
        t = time.perf_counter()
        renderer = Renderer(model_dir, get_settings(), dataset=dataset, source=source, device=device)
        sub = renderer.subject
        click.echo(
            f"subject loaded in {time.perf_counter() - t:.2f} s (model res {sub.model_res}, {sub.loaded.device})"
        )
        speech = _speech(work, seconds, audio)
        options = RenderOptions(mode=mode, qc=not no_qc)
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        result = renderer.render(speech, work / "out.mp4", options)
        enc_cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
        enc_cpu = (enc_cpu.ru_utime + enc_cpu.ru_stime) - (children.ru_utime + children.ru_stime)
        n = result.frames
        click.echo(
            f"{mode} {result.width}x{result.height} at {result.fps} fps, {n} frames: "
            f"{n / result.seconds:.2f} frames/s end to end ({1000 * result.seconds / n:.1f} ms/frame)"
        )
        for part, secs in result.timings.items():
            click.echo(f"  {part:<8} {1000 * secs / n:7.2f} ms/frame")
        rest = result.seconds - result.timings["head"] - result.timings["qc"]
        click.echo(f"  everything but the head and QC: {1000 * rest / n:.2f} ms/frame (wall)")
        click.echo(f"  ffmpeg (decode/encode/mux children) CPU: {1000 * enc_cpu / n:.2f} ms/frame")
        click.echo(f"  QC flags {result.qc.get('flags')}, face share {result.qc.get('face_share')}")
        if memory_minutes:
            long = _speech(work, memory_minutes * 60, audio)
            samples: list[tuple[float, float]] = []

            def progress(step: str, fraction: float, message: str) -> None:
                if not samples or fraction - samples[-1][0] >= 0.05:
                    samples.append((fraction, _rss_mb()))

            before = _rss_mb()
            t = time.perf_counter()
            res = renderer.render(long, work / "long.mp4", options, progress)
            click.echo(
                f"{memory_minutes:g}-minute track: {res.frames} frames in {time.perf_counter() - t:.0f} s; RSS "
                f"before {before:.0f} MB, then "
                + ", ".join(f"{100 * f:.0f}%: {m:.0f}" for f, m in samples[::2])
            )


if __name__ == "__main__":
    main()
