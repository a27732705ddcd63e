"""Media I/O speed on this machine: probe, streaming decode, encode, normalize (prints figures).

Run: ``python bench/media_io.py [--seconds 5] [--size 512]``. Uses a generated testsrc clip so it needs
no input files; the figures go in docs/BENCHMARKS.md (section "Media I/O").
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from pathlib import Path

from gpu_worker.media.binaries import ffmpeg_exe
from gpu_worker.media.frames import FrameReader, FrameWriter
from gpu_worker.media.normalize import normalize_audio, normalize_video
from gpu_worker.media.probe import probe
from shared.settings import Settings


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--size", type=int, default=512, help="square frame side (SyncTalk trains at 512)")
    args = ap.parse_args()
    settings = Settings(environment="test")
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src.mp4"
        subprocess.run(
            [ffmpeg_exe(), "-v", "error", "-y", "-f", "lavfi", "-i",
             f"testsrc2=size={args.size}x{args.size}:rate=30:duration={args.seconds}",
             "-f", "lavfi", "-i", f"sine=sample_rate=44100:duration={args.seconds}",
             "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", str(src)],
            check=True,
        )  # fmt: skip
        n_src = round(30 * args.seconds)
        print(f"clip: {args.size}x{args.size}, 30 fps, {args.seconds:g} s ({n_src} frames), H.264 + AAC")

        t = time.perf_counter()
        for _ in range(10):
            probe(src, settings)
        print(f"probe ({probe(src, settings).backend}):      {(time.perf_counter() - t) / 10 * 1000:7.1f} ms")

        t = time.perf_counter()
        frames = sum(1 for _ in FrameReader(src, settings=settings))
        dt = time.perf_counter() - t
        print(f"FrameReader decode:    {frames / dt:7.1f} frames/s")

        t = time.perf_counter()
        with FrameWriter(Path(tmp) / "out.mp4", fps=25, size=(args.size, args.size), settings=settings) as w:
            for f in FrameReader(src, fps=25, settings=settings):
                w.write(f)
        dt = time.perf_counter() - t
        print(f"decode+encode (crf18): {w.frames_written / dt:7.1f} frames/s")

        t = time.perf_counter()
        normalize_video(src, Path(tmp) / "norm.mp4", settings)
        dt = time.perf_counter() - t
        print(f"normalize_video:       {dt:7.2f} s ({args.seconds / dt:.2f}x real time)")

        t = time.perf_counter()
        normalize_audio(src, Path(tmp) / "a.wav", settings)
        print(f"normalize_audio:       {(time.perf_counter() - t) * 1000:7.1f} ms")


if __name__ == "__main__":
    main()
