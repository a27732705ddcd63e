"""Training speed and quality on a real dataset within a wall-clock budget (for a lent GPU).

    python bench/gpu_train.py DATASET --profile standard --minutes 5 [--out DIR]

1. times steady-state steps of each stage of the profile (after the occupancy warm-up);
2. trains the profile for real with its step counts scaled so the three stages fit the budget
   (head 70%, lips 10%, torso 20% of the time), keeping every other setting of the profile;
3. evaluates the validation frames (PSNR, SSIM) and times the frame API.
Prints a table and writes gpu_train.json under --out (or $OUT). No asserts: figures for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SHARE = {"head": 0.7, "lips": 0.1, "torso": 0.2}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def step_seconds(dataset: Path, profile: str, stage: str, steps: int, device: str) -> float:
    """Median-free simple mean of `steps` steady-state steps of one stage (head trained a little first)."""
    from gpu_worker.model.config import profile_config
    from gpu_worker.model.trainer import Trainer

    cfg = profile_config(profile)
    with tempfile.TemporaryDirectory() as tmp:
        t = Trainer(dataset, Path(tmp) / "m", cfg, device=device)
        t._enter_stage("head")
        for _ in range(cfg.renderer.grid_warmup_steps // max(cfg.renderer.update_every, 1) + 1):
            t._update_grid()
        if stage != "head":
            for _ in range(20):
                t.step("head")
            t.stages_done.append("head")
            t._enter_stage(stage)
        for _ in range(5):
            t.step(stage)
        _sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            t.step(stage)
        _sync(device)
        return (time.perf_counter() - start) / steps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("dataset", type=Path)
    ap.add_argument("--profile", default="standard")
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "bench-out")))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    from gpu_worker.model import kernels
    from gpu_worker.model.config import profile_config
    from gpu_worker.model.evaluate import evaluate_model
    from gpu_worker.model.trainer import train_model
    from shared.settings import Settings

    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"device {name} | torch {torch.__version__} | kernels {kernels.backend_name(args.device)}")
    cfg = profile_config(args.profile)
    timing = {
        s: step_seconds(args.dataset, args.profile, s, 30, args.device) for s in ("head", "lips", "torso")
    }
    for s, sec in timing.items():
        print(f"  {s:<6} {sec * 1000:8.1f} ms/step  ({cfg.data.rays_per_batch} rays/step)")

    budget = args.minutes * 60
    steps = {s: max(50, int(budget * SHARE[s] / timing[s])) for s in timing}
    cfg.trainer.head_steps, cfg.trainer.lips_steps, cfg.trainer.torso_steps = (
        steps["head"],
        steps["lips"],
        steps["torso"],
    )
    cfg.trainer.checkpoint_every = 10**9  # one checkpoint per stage end is enough here
    model_dir = Path(tempfile.mkdtemp()) / "model"
    start = time.perf_counter()
    result = train_model(args.dataset, model_dir, cfg, device=args.device)
    train_s = time.perf_counter() - start
    print(f"trained {steps} in {train_s:.0f} s")

    start = time.perf_counter()
    metrics = evaluate_model(
        model_dir, Settings(environment="test"), out_dir=args.out / "eval", device=args.device
    )
    eval_s = time.perf_counter() - start
    sd = metrics["self_driven"]
    fps = sd["frames"] / eval_s
    print(
        f"validation: PSNR {sd['psnr']:.2f} dB, SSIM {sd['ssim']:.3f} over {sd['frames']} frames "
        f"({fps:.1f} frames/s including metrics)"
    )
    report = {
        "device": name,
        "torch": torch.__version__,
        "profile": args.profile,
        "minutes": args.minutes,
        "ms_per_step": {s: v * 1000 for s, v in timing.items()},
        "rays_per_step": cfg.data.rays_per_batch,
        "steps": steps,
        "train_seconds": train_s,
        "global_step": result.global_step,
        "val_psnr": sd["psnr"],
        "val_ssim": sd["ssim"],
        "eval_seconds": eval_s,
        "eval_frames": sd["frames"],
        "final_history": result.history[-5:] if result.history else [],
    }
    (args.out / "gpu_train.json").write_text(json.dumps(report, indent=2, default=float))
    np.save(
        args.out / "loss_curve.npy", np.array([h.get("loss", np.nan) for h in result.history], np.float32)
    )


if __name__ == "__main__":
    main()
