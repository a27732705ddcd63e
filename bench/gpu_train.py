"""Training speed and quality on a real dataset within a wall-clock budget (for a lent GPU).

    python bench/gpu_train.py DATASET --profile standard --minutes 5 [--reference REF] [--out DIR]
    python bench/gpu_train.py --measure OUT/new_audio.npz --truth-video SUBJECT.mp4   # back on a CPU host

1. times steady-state steps of each stage of the profile (after the occupancy warm-up);
2. trains the profile for real with its step counts scaled so the three stages fit the budget
   (head 70%, lips 10%, torso 20% of the time), keeping every other setting of the profile;
3. evaluates the validation frames (PSNR, SSIM) and times the frame API at the dataset's size and at
   512 px (the same model's rays at twice the size: a speed figure only);
4. with ``--reference`` (a second preprocessed clip of the subject), renders frames for its audio and
   saves them as JPEGs in new_audio.npz: the GPU host has no MediaPipe, so ``--measure`` later reads
   their lip gap on a CPU host and correlates it with the truth video's (the issue's lip-sync figure).
Prints a table and writes gpu_train.json under --out (or $OUT). No asserts: figures for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
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


def render_fps(model_dir: Path, dataset: Path, device: str, size: int, frames: int = 32) -> float:
    """Frames per second of the frame API (batches of 8, the model's torso) at ``size`` px."""
    import dataclasses

    from gpu_worker.model.dataparser import parse_dataset
    from gpu_worker.model.render_api import load_model, render_frames

    loaded = load_model(model_dir, device)
    info = parse_dataset(dataset, loaded.spec.resolution)
    scale = size / loaded.spec.resolution
    loaded.spec = dataclasses.replace(
        loaded.spec, resolution=size, intrinsics=tuple(v * scale for v in loaded.spec.intrinsics)
    )
    ids = np.resize(info.train_ids, frames)
    plate = np.zeros((size, size, 3), np.float32)
    args = (info.poses[ids], info.expression[ids], info.audio_features[ids], plate)
    for _ in render_frames(loaded, *(a[:8] for a in args[:3]), plate, batch_size=8):
        pass  # warm-up: kernels, allocator
    _sync(device)
    start = time.perf_counter()
    n = sum(len(b.images) for b in render_frames(loaded, *args, batch_size=8))
    _sync(device)
    return n / (time.perf_counter() - start)


def render_new_audio(model_dir: Path, reference: Path, device: str, out: Path) -> int:
    """Render frames for the reference clip's audio (poses ping-pong over the training frames, the
    mean latent, as evaluation does) and save them as JPEGs [F] in ``out``."""
    import cv2

    from gpu_worker.model.datamanager import DataManager
    from gpu_worker.model.dataparser import parse_dataset
    from gpu_worker.model.render_api import load_model, pingpong_indices, render_frames

    loaded = load_model(model_dir, device)
    info = parse_dataset(loaded.dataset, loaded.spec.resolution)
    ref = parse_dataset(reference, loaded.spec.resolution)
    n = len(ref.audio_features)
    pose_ids = pingpong_indices(info.train_ids, n)
    plate = DataManager(info, loaded.config.data, "cpu").background.numpy()  # [R, R, 3]
    jpegs = []
    for batch in render_frames(
        loaded, info.poses[pose_ids], info.expression[pose_ids], ref.audio_features, plate, batch_size=8
    ):
        for img in batch.images:
            bgr = np.ascontiguousarray((img[..., ::-1] * 255).round().astype(np.uint8))
            jpegs.append(
                np.frombuffer(cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 95])[1], np.uint8)
            )
    np.savez(out, *jpegs)
    return n


def measure_new_audio(npz: Path, truth_video: Path) -> None:
    """CPU host: MediaPipe lip gap of the saved frames vs the truth video's (Pearson r)."""
    import cv2

    from gpu_worker.model import metrics as M
    from gpu_worker.model.dataparser import mouth_opening
    from gpu_worker.model.eval.sync import video_lip_gap
    from shared.settings import Settings

    settings = Settings(environment="test")
    data = np.load(npz)
    frames = [
        cv2.imdecode(data[k], cv2.IMREAD_COLOR)[..., ::-1]
        for k in sorted(data.files, key=lambda f: int(f[4:]))
    ]
    opening = np.full(len(frames), np.nan)
    with M.mouth_tracker(settings) as tracker:
        for k, img in enumerate(frames):
            lms = tracker(np.ascontiguousarray(img).astype(np.float32) / 255)
            if lms is not None:
                opening[k] = mouth_opening(lms[None])[0]
    found = np.isfinite(opening)
    truth = video_lip_gap(truth_video, settings, len(frames))
    k = min(len(truth), len(frames))
    ok = found[:k]
    r = M.pearson(opening[:k][ok], truth[:k][ok])
    print(f"new audio: {k} frames, face found in {int(ok.sum())}; lip gap vs truth r = {r}")


def main() -> None:
    if "--measure" in sys.argv:
        mp = argparse.ArgumentParser()
        mp.add_argument("--measure", type=Path, required=True)
        mp.add_argument("--truth-video", type=Path, required=True)
        a = mp.parse_args()
        measure_new_audio(a.measure, a.truth_video)
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("dataset", type=Path)
    ap.add_argument("--reference", type=Path, default=None, help="second preprocessed clip (new audio)")
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
    eval_dir = model_dir.parent / "eval"  # the previews stay there: the GPU host returns few files
    metrics = evaluate_model(model_dir, Settings(environment="test"), out_dir=eval_dir, device=args.device)
    for name in ("metrics.json", "val_000.png"):
        if (eval_dir / name).exists():
            shutil.copy(eval_dir / name, args.out / f"eval_{name}")
    eval_s = time.perf_counter() - start
    sd = metrics["self_driven"]
    fps = sd["frames"] / eval_s
    print(
        f"validation: PSNR {sd['psnr']:.2f} dB, portrait {sd['psnr_portrait']:.2f} dB, SSIM "
        f"{sd['ssim']:.3f} over {sd['frames']} frames ({fps:.1f} frames/s including metrics)"
    )
    api_fps = {}
    for size in (metrics["resolution"], 512):
        api_fps[size] = render_fps(model_dir, args.dataset, args.device, size)
        print(f"frame API at {size} px: {api_fps[size]:.1f} frames/s (batches of 8, model torso)")
    new_audio = None
    if args.reference is not None:
        start = time.perf_counter()
        n = render_new_audio(model_dir, args.reference, args.device, args.out / "new_audio.npz")
        new_audio = {"frames": n, "seconds": time.perf_counter() - start}
        print(f"new audio: {n} frames rendered to new_audio.npz (measure them with --measure on a CPU host)")
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
        "val_psnr_portrait": sd["psnr_portrait"],
        "frame_api_fps": api_fps,
        "new_audio": new_audio,
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
