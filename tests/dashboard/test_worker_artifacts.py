"""What the workers write for the dashboard: the report's pictures drawn from a dataset folder, and the
training curves gathered from the trainer's progress reports (resumed runs included)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import cv2
import numpy as np

from gpu_worker.preprocess.report_files import REPORT_IMAGES, curves_key
from gpu_worker.preprocess.report_images import coverage_plot, write_report_images
from gpu_worker.tasks.handlers import Curves
from shared.storage.local import LocalStorage


def _dataset(root, n: int = 30, resolution: int = 64):
    """A dataset folder as docs/DATASET.md lays it out, with only what the pictures read."""
    for sub in ("frames", "parsing", "face_mask"):
        (root / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        cv2.imwrite(
            str(root / "frames" / f"{i:06d}.jpg"), rng.integers(0, 255, (resolution, resolution, 3), np.uint8)
        )
        labels = np.zeros((resolution, resolution), np.uint8)
        labels[10:30, 20:44], labels[30:40, 26:38], labels[40:, 8:56] = 1, 2, 3
        cv2.imwrite(str(root / "parsing" / f"{i:06d}.png"), labels)
        cv2.imwrite(str(root / "face_mask" / f"{i:06d}.png"), (labels == 1).astype(np.uint8) * 255)
    cv2.imwrite(str(root / "background.png"), np.full((resolution, resolution, 3), 90, np.uint8))
    np.save(root / "landmarks.npy", rng.uniform(10, 50, (n, 478, 3)).astype(np.float32))
    usable = [i % 10 != 3 for i in range(n)]  # one frame in ten without a usable face
    (root / "manifest.json").write_text(json.dumps({"usable": usable, "resolution": resolution, "fps": 25}))
    return root


def test_the_report_pictures_are_drawn_from_a_dataset(tmp_path):
    written = write_report_images(_dataset(tmp_path / "dataset"), tmp_path / "report")
    assert sorted(p.name for p in written) == sorted(REPORT_IMAGES)
    frames = cv2.imread(str(tmp_path / "report" / "frames.jpg"))
    assert frames.shape == (192, 4 * 192, 3)  # four sample frames, scaled up from 64 px
    masks = cv2.imread(str(tmp_path / "report" / "masks.jpg"))
    assert masks.shape == (2 * 192, 4 * 192, 3)
    for path in written:
        assert 500 < path.stat().st_size < 400_000  # small files for a web page


def test_coverage_shows_each_seconds_share_of_usable_frames():
    full = coverage_plot([True] * 50, 25)
    half = coverage_plot([True] * 25 + [i % 2 == 0 for i in range(25)], 25)
    # the second bar is green when every frame was usable, another colour when only half were
    green = np.array([60, 160, 60])
    col = 44 + (720 - 10 - 44) * 3 // 4  # the middle of the second of two bars
    assert (full[150, col] == green).all() and not (half[150, col] == green).all()


def test_curves_follow_the_trainers_reports_and_survive_a_resume(tmp_path):
    storage = LocalStorage(tmp_path / "storage", "a-secret", "http://127.0.0.1:8000")
    ctx = SimpleNamespace(storage=storage)
    subject = SimpleNamespace(tenant_id="t1", id="s1")
    curves = Curves(ctx, subject)
    curves.add("train:head", "step 10/40 loss 0.2000 psnr 18.00 eta 0m30s")
    curves.add("evaluate", "evaluating the model")  # not a training report: ignored
    curves.add("train:head", "step 20/40 loss 0.1000 psnr 21.00 eta 0m20s")
    curves.flush()
    doc = json.loads(storage.read_bytes(curves_key("t1", "s1")))
    assert doc["total_steps"] == 40
    assert [(p["stage"], p["step"], p["loss"], p["psnr"]) for p in doc["points"]] == [
        ("head", 10, 0.2, 18.0),
        ("head", 20, 0.1, 21.0),
    ]
    # a new worker resumes from the checkpoint at step 10: the points it redoes replace the old ones
    resumed = Curves(ctx, subject)
    resumed.add("train:head", "step 20/40 loss 0.0900 psnr 22.00 eta 0m20s")
    resumed.add("train:lips", "step 40/40 loss nan psnr 25.00 eta 0m00s")  # the last step: written at once
    points = json.loads(storage.read_bytes(curves_key("t1", "s1")))["points"]
    assert [(p["stage"], p["step"]) for p in points] == [("head", 10), ("head", 20), ("lips", 40)]
    assert points[1]["loss"] == 0.09 and points[2]["loss"] is None  # JSON has no NaN
