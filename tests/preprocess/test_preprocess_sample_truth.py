"""The Head-Sync Stabilizer against the sample subject's true head rotation."""

from __future__ import annotations

import json

import numpy as np
import pytest
from preprocess_helpers import tiny_settings

from gpu_worker.preprocess import run_preprocess
from gpu_worker.preprocess.stabilizer.camera import CV_TO_GL, rotation_errors_deg, rotation_jitter_deg


@pytest.mark.slow
def test_head_rotation_matches_truth_and_jitter_drops(tmp_path):
    from gpu_worker.sample import make_sample
    from gpu_worker.sample.truth import load_truth

    s = tiny_settings(tmp_path, min_train_seconds=5.0)
    sample = make_sample(tmp_path / "sample", seconds=8.0, size=384, seed=3, settings=s)
    ds = run_preprocess(sample.video, tmp_path / "ds", s, resolution=256)
    frames = []
    for name in ("transforms_train.json", "transforms_val.json"):
        frames += json.loads((ds / name).read_text())["frames"]
    idx = np.array([f["index"] for f in frames])
    c2w = np.array([f["transform_matrix"] for f in frames])  # [N, 4, 4]
    head_rot = np.transpose(c2w[:, :3, :3] @ CV_TO_GL, (0, 2, 1))  # head -> OpenCV camera
    truth = load_truth(sample.truth)
    err = rotation_errors_deg(head_rot, truth.rotation[idx])
    assert err.mean() < 1.0, f"rotation MAE {err.mean():.2f} deg"
    pose = json.loads((ds / "report.json").read_text())["pose"]
    assert pose["rotation_jitter_deg_after"] < pose["rotation_jitter_deg_before"]
    assert rotation_jitter_deg(head_rot) < pose["rotation_jitter_deg_before"]
