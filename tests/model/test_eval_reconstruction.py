"""Reconstruction metrics against gt/ (person over the plate) and frames/ (the real crops)."""

from __future__ import annotations

import numpy as np

from gpu_worker.model.eval.reconstruction import Reconstruction, portrait_blend
from gpu_worker.model.metrics import psnr

R = 32


def _scene(seed: int = 0):
    """A render that is exact on the person and the plate; a real frame whose background differs
    from the plate (the plate is only an estimate of it)."""
    rng = np.random.default_rng(seed)
    gt = rng.uniform(0.2, 0.8, (R, R, 3))  # person over plate
    mask = np.zeros((R, R, 1))
    mask[8:24, 10:22] = 1.0  # inner face
    person = np.zeros((R, R, 1))
    person[4:32, 6:26] = 1.0  # head and torso: the real frame's own pixels there
    frame = person * gt + (1 - person) * np.clip(gt + 0.1, 0, 1)  # real background, 0.1 off the plate
    return gt.copy(), gt, frame, mask


def test_frames_metrics_see_the_plate_the_gt_metrics_get_for_free():
    render, gt, frame, mask = _scene()
    rec = Reconstruction(with_frames=True)
    rec.add(render, gt, mask, frame)
    res = rec.result()
    # against gt/ the plate matches by construction: a perfect score
    assert res["psnr"] == res["psnr_portrait"] == psnr(gt, gt) and res["ssim"] > 0.999
    # against the real frame the plate's error counts ...
    assert res["psnr_frames"] == psnr(render, frame) and res["psnr_frames"] < 30
    assert res["ssim_frames"] < res["ssim"]
    # ... except in the portrait blend: render inside the face mask, the real frame outside
    assert res["psnr_portrait_frames"] == psnr(portrait_blend(render, frame, mask), frame) > 100


def test_portrait_frames_score_the_face_against_the_real_frame():
    render, gt, frame, mask = _scene(1)
    render = render.copy()
    render[8:24, 10:22] += 0.05  # an error inside the face: every metric sees it
    rec = Reconstruction(with_frames=True)
    rec.add(render, gt, mask, frame)
    rec.add(gt, gt, mask, frame)  # averaged over frames
    res = rec.result()
    inside = psnr(portrait_blend(render, frame, mask), frame)
    assert inside < 40 and np.isclose(res["psnr_portrait_frames"], (inside + psnr(frame, frame)) / 2)


def test_without_frames_the_frames_keys_are_none():
    render, gt, frame, mask = _scene()
    rec = Reconstruction(with_frames=False)
    rec.add(render, gt, mask, frame)
    res = rec.result()
    assert res["psnr"] is not None
    assert res["psnr_frames"] is None and res["ssim_frames"] is None and res["psnr_portrait_frames"] is None
