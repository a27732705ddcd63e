"""One audio encoder end to end on the sample subject: dataset, preview training, voices (issue 23).

    python bench/encoders.py --encoder whisper [--out bench-output/encoders] [--steps-scale 1.0]
        [--voices auto,espeak-ng:en-us,...] [--levels]

The sample clip (20 s, 256 px, seed 0: the demo's) is made once under --out and shared by every
encoder; the dataset (preview resolution), the model and bench/voices.py's clips and table go under
--out/ENCODER. Prints the times (audio step, training, ms per training step) and writes result.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--encoder", required=True)
    ap.add_argument("--out", type=Path, default=REPO / "bench-output" / "encoders")
    ap.add_argument(
        "--steps-scale", type=float, default=1.0, help="Training steps x this (both encoders alike)."
    )
    ap.add_argument("--voices", default=None, help="Comma-separated voices for bench/voices.py.")
    ap.add_argument("--levels", action="store_true", help="Also the level copies of bench/voices.py.")
    args = ap.parse_args()

    from gpu_worker.model.evaluate import evaluate_model
    from gpu_worker.model.trainer import train
    from gpu_worker.preprocess import run_preprocess
    from gpu_worker.render.dub import PROFILE_RESOLUTION
    from gpu_worker.sample import make_sample
    from shared.settings import get_settings

    settings = get_settings()
    out = args.out.absolute()
    sample = out / "sample"
    if not (sample / "truth.json").exists():
        make_sample(sample, seconds=20.0, size=256, seed=0, settings=settings)
    run = out / args.encoder
    t = time.perf_counter()
    ds = run_preprocess(
        sample / "subject.mp4", run / "ds", settings, resolution=PROFILE_RESOLUTION["preview"],
        audio_encoder=args.encoder,
    )  # fmt: skip
    report = json.loads((ds / "report.json").read_text())
    t_pre = time.perf_counter() - t
    t = time.perf_counter()
    result = train(ds, run / "model", profile="preview", settings=settings, steps_scale=args.steps_scale)
    t_train = time.perf_counter() - t
    metrics = evaluate_model(run / "model", settings, out_dir=run / "eval", previews=0)
    row = {
        "encoder": args.encoder,
        "steps_scale": args.steps_scale,
        "preprocess_s": round(t_pre, 1),
        "audio_step_s": report["seconds"].get("audio"),
        "train_s": round(t_train, 1),
        "train_steps": result.global_step,
        "ms_per_step": round(1000 * t_train / max(1, result.global_step), 1),
        "val_psnr": metrics.get("validation", {}).get("psnr"),
        "metrics": metrics,
        "load": os.getloadavg(),
    }
    (run / "result.json").write_text(json.dumps(row, indent=2, default=str))
    print({k: v for k, v in row.items() if k != "metrics"}, flush=True)
    cmd = [
        sys.executable,
        str(REPO / "bench" / "voices.py"),
        str(run / "model"),
        "--out",
        str(run / "voices"),
    ]
    cmd += ["--clips", str(out / "voice-clips")]  # shared by the encoders: make them first (--clips-only)
    cmd += ["--voices", args.voices] if args.voices else []
    cmd += [] if args.levels else ["--no-levels"]
    subprocess.run(cmd, check=True)


if __name__ == "__main__":
    main()
