"""Speed of the model: training steps per second and frame-API render fps.

    python bench/model.py                      # fresh preview-profile model on a synthetic 128 px dataset
    python bench/model.py --model MODEL_DIR    # a trained model (real occupancy: the figure that matters)

Prints figures (no asserts); docs/BENCHMARKS.md records them with the machine and date.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "model"))


def bench_train(dataset: Path, profile: str, steps: int, device: str) -> None:
    from gpu_worker.model.config import profile_config
    from gpu_worker.model.trainer import Trainer

    cfg = profile_config(profile, "head")
    with tempfile.TemporaryDirectory() as tmp:
        t = Trainer(dataset, Path(tmp) / "m", cfg, device=device)
        t._enter_stage("head")
        for _ in range(cfg.renderer.grid_warmup_steps // cfg.renderer.update_every + 1):
            t._update_grid()  # past the warm-up: measure steady-state steps
        start = time.perf_counter()
        for _ in range(steps):
            t.step("head")
        dt = (time.perf_counter() - start) / steps
    print(
        f"train {profile:8s} head step: {dt * 1000:7.1f} ms/step ({cfg.data.rays_per_batch} rays)  device={device}"
    )


def bench_render(model_dir: Path | None, dataset: Path, frames: int, device: str, batch: int = 4) -> None:
    from gpu_worker.model.dataparser import parse_dataset
    from gpu_worker.model.render_api import load_model, render_frames

    loaded = load_model(model_dir, device)
    info = parse_dataset(loaded.dataset or dataset, loaded.spec.resolution)
    ids = info.train_ids[:frames]
    plate = np.zeros((info.resolution, info.resolution, 3), np.float32)
    calls = []
    infer = loaded.model.field.infer
    loaded.model.field.infer = lambda *a: calls.append(1) or infer(*a)  # count field calls
    start = time.perf_counter()
    n = 0
    for out in render_frames(
        loaded, info.poses[ids], info.expression[ids], info.audio_features[ids], plate, batch_size=batch
    ):
        n += len(out.images)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    dt = time.perf_counter() - start
    print(
        f"render {info.resolution} px: {n / dt:6.2f} fps ({n} frames, batch {batch}, "
        f"{len(calls) / n:.1f} field calls/frame, torso from model: {loaded.has_torso}) device={device}"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, default=None, help="trained model folder (default: a fresh one)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4, help="frames marched together by the frame API")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from synthetic import make_synthetic_dataset

    from gpu_worker.model import kernels

    print(f"kernels backend: {kernels.backend_name(args.device)}; torch threads {args.threads}")
    with tempfile.TemporaryDirectory() as tmp:
        ds = make_synthetic_dataset(Path(tmp) / "ds", n_frames=44, res=128, seed=0)
        for profile in ("tiny", "preview"):
            bench_train(ds, profile, args.steps, args.device)
        model = args.model
        if model is None:
            from gpu_worker.model.config import profile_config
            from gpu_worker.model.trainer import train_model

            cfg = profile_config("preview")
            cfg.trainer.head_steps, cfg.trainer.lips_steps, cfg.trainer.torso_steps = 200, 1, 20
            model = Path(tmp) / "model"
            train_model(ds, model, cfg, device=args.device)
        bench_render(model, ds, args.frames, args.device, args.batch)


if __name__ == "__main__":
    main()
