"""Sample-subject speed on this machine: speech, rig set-up, per-frame render, whole clip (prints figures).

Run: ``python bench/sample.py [--seconds 12] [--sizes 256 512]``. Model files come from
SYNCTALK_MODEL_SOURCES (default ../shared/models); figures go in docs/BENCHMARKS.md ("Sample subject").
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from gpu_worker.sample import make_sample
from gpu_worker.sample.geometry import euler_to_matrix
from gpu_worker.sample.head_rig import HeadRig
from gpu_worker.sample.paint import EyelidPainter, paint_mouth_gap
from gpu_worker.sample.portrait import load_portrait
from gpu_worker.sample.speech import pick_text, speech_track
from shared.settings import Settings

SHARED_MODELS = Path(__file__).resolve().parents[2] / "shared" / "models"


def render_ms(size: int, settings: Settings, frames: int = 50) -> tuple[float, float]:
    """(rig set-up s, render ms per frame) without encoding."""
    import cv2

    t0 = time.perf_counter()
    portrait = load_portrait(size, settings)
    rig = HeadRig(portrait)
    eyes = EyelidPainter(portrait.image, portrait.landmarks)
    setup = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    for _ in range(frames):
        rot = euler_to_matrix(*rng.uniform(-3, 3, 3))
        trans, opening = rng.uniform(-2, 2, 3), float(rng.uniform())
        rest = portrait.image.copy()
        eyes.paint(rest, float(rng.uniform()))
        frame = cv2.remap(rest, rig.source_map(rot, trans, opening), None, cv2.INTER_LINEAR)
        paint_mouth_gap(frame, rig.mouth_gap_polygon(rot, trans, opening))
    return setup, 1000 * (time.perf_counter() - t0) / frames


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=12.0)
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            environment="test",
            data_dir=Path(tmp) / "data",
            model_dir=Path(tmp) / "models",
            model_sources=os.environ.get("SYNCTALK_MODEL_SOURCES") or str(SHARED_MODELS),
            model_download=False,
        )
        speech_track(pick_text(0), n_frames=25, fps=25, seed=0)  # load the voice once
        t0 = time.perf_counter()
        speech = speech_track(pick_text(0), n_frames=round(args.seconds * 25), fps=25, seed=0)
        print(
            f"speech ({speech.engine}, {args.seconds:g} s at {speech.rate} Hz): {time.perf_counter() - t0:.2f} s"
        )
        for size in args.sizes:
            setup, ms = render_ms(size, settings)
            t0 = time.perf_counter()
            make_sample(Path(tmp) / f"clip{size}", seconds=args.seconds, size=size, settings=settings)
            total = time.perf_counter() - t0
            print(
                f"size {size}: rig set-up {setup:.2f} s, render {ms:.1f} ms/frame, "
                f"make_sample {args.seconds:g} s clip {total:.1f} s ({args.seconds / total:.1f}x real time)"
            )


if __name__ == "__main__":
    main()
