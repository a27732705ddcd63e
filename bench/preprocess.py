"""Preprocessing speed and stabilizer quality on the sample subject (figures for docs/BENCHMARKS.md).

    python bench/preprocess.py [--seconds 12] [--size 512] [--resolution 512]

Prints per-step milliseconds per frame, head rotation error against the sample's truth (coarse pose
and after bundle adjustment), jitter, dataset size and the peak size of the staging folder.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


def _du(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.path.getsize(os.path.join(root, f))
    return total


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=12.0)
    ap.add_argument("--size", type=int, default=512, help="sample video side (px)")
    ap.add_argument("--resolution", type=int, default=512)
    ap.add_argument("--keep", action="store_true", help="keep the sample and dataset (printed path)")
    args = ap.parse_args()

    from gpu_worker.preprocess import run_preprocess
    from gpu_worker.preprocess.canonical_face import load_canonical_face
    from gpu_worker.preprocess.landmarker import face_landmarker_path
    from gpu_worker.preprocess.stabilizer.camera import CV_TO_GL, rotation_errors_deg, rotation_jitter_deg
    from gpu_worker.preprocess.stabilizer.pose_init import coarse_poses
    from gpu_worker.preprocess.stabilizer.rigidity import landmark_rigidity
    from gpu_worker.sample import make_sample
    from gpu_worker.sample.truth import load_truth
    from shared.settings import Settings

    tmp = Path(tempfile.mkdtemp(prefix="bench-preprocess-"))
    settings = Settings(
        environment="test", data_dir=tmp / "data", model_dir=tmp / "models",
        model_sources=os.environ.get("SYNCTALK_MODEL_SOURCES", str(Path(__file__).resolve().parents[2] / "shared" / "models")),
        model_download=False, min_train_seconds=min(10.0, args.seconds),
    )  # fmt: skip
    sample = make_sample(tmp / "sample", seconds=args.seconds, size=args.size, seed=0, settings=settings)

    peak = {"bytes": 0}
    stop = threading.Event()

    def watch() -> None:
        staging = tmp / ".ds.partial"
        while not stop.is_set():
            if staging.exists():
                peak["bytes"] = max(peak["bytes"], _du(staging))
            time.sleep(0.5)

    # CPU seconds per step (all threads of this process): steadier than wall time on a shared machine.
    cpu: dict[str, float] = {}
    began: dict[str, float] = {}

    def progress(step: str, fraction: float, message: str) -> None:
        if message.endswith("started"):
            began[step] = time.process_time()
        elif fraction == 1.0 and step in began:
            cpu[step] = time.process_time() - began[step]

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    load_before = os.getloadavg()[0]
    start, cpu_start = time.perf_counter(), time.process_time()
    ds = run_preprocess(sample.video, tmp / "ds", settings, resolution=args.resolution, progress=progress)
    wall, cpu_total = time.perf_counter() - start, time.process_time() - cpu_start
    stop.set()
    watcher.join()

    report = json.loads((ds / "report.json").read_text())
    n = report["frame_count"]
    print(f"sample: {args.seconds:g} s, {args.size} px source, {n} frames, dataset at {args.resolution} px")
    print(f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after (2 cores)")
    print(f"{'step':<10} {'s':>7} {'ms/frame':>9} {'cpu ms/frame':>13}")
    for step, sec in report["seconds"].items():
        print(f"{step:<10} {sec:7.2f} {1000 * sec / n:9.1f} {1000 * cpu.get(step, 0.0) / n:13.1f}")
    print(
        f"{'total':<10} {wall:7.2f} {1000 * wall / n:9.1f} {1000 * cpu_total / n:13.1f}"
        "   (wall clock, incl. probe and hashing)"
    )
    print(f"bundle adjustment: {report['pose'].get('iterations')} iterations")

    truth = load_truth(sample.truth)
    frames = []
    for name in ("transforms_train.json", "transforms_val.json"):
        frames += json.loads((ds / name).read_text())["frames"]
    idx = np.array([f["index"] for f in frames])
    c2w = np.array([f["transform_matrix"] for f in frames])
    final = np.transpose(c2w[:, :3, :3] @ CV_TO_GL, (0, 2, 1))
    face = load_canonical_face(face_landmarker_path(settings))
    rig = landmark_rigidity(face)
    lm = np.load(ds / "landmarks.npy")
    usable = np.array(json.loads((ds / "manifest.json").read_text())["usable"])
    coarse = coarse_poses(face.vertices, lm, usable, np.flatnonzero(rig >= 1.0), args.resolution).rotations[
        idx
    ]
    for name, rot in (("coarse", coarse), ("stabilized", final)):
        err = rotation_errors_deg(rot, truth.rotation[idx])
        print(
            f"{name:<11} rotation MAE {err.mean():.3f} deg (max {err.max():.3f}), jitter {rotation_jitter_deg(rot):.4f} deg"
        )
    print(f"truth       jitter {rotation_jitter_deg(truth.rotation[idx]):.4f} deg")
    pose = report["pose"]
    print(
        f"reprojection (landmarks) {pose['landmark_reprojection_px_before']:.2f} -> {pose['landmark_reprojection_px_after']:.2f} px, "
        f"(tracks) {pose['track_reprojection_px_before']:.2f} -> {pose['track_reprojection_px_after']:.2f} px, "
        f"focal {pose['focal_before']:.0f} -> {pose['focal_after']:.0f} px"
    )
    size = _du(ds)
    print(
        f"dataset {size / 2**20:.1f} MiB, staging peak {peak['bytes'] / 2**20:.1f} MiB ({peak['bytes'] / max(1, size):.2f}x)"
    )
    if args.keep:
        print(f"kept: {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)  # ~200 MB per run otherwise left in /tmp


if __name__ == "__main__":
    main()
