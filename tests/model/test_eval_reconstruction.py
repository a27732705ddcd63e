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


def test_face_psnr_scores_the_face_region_alone():
    render, gt, frame, mask = _scene(2)
    render = render.copy()
    render[8:24, 10:22] += 0.05  # an error inside the face only
    render[0:4] = 0.0  # and a wrong background, outside the face
    rec = Reconstruction(with_frames=True)
    rec.add(render, gt, mask, frame)
    res = rec.result()
    # the face's own error, whatever the background: 0.05 everywhere in the mask -> 26.0 dB
    assert np.isclose(res["psnr_face"], 10 * np.log10(1 / 0.05**2))
    # the face pixels of the real frame are the person's (gt) there: the same figure against frames/
    assert np.isclose(res["psnr_face_frames"], res["psnr_face"])
    # the whole-frame and portrait figures tell other stories: the portrait's is flattered by the real
    # pixels around the face (+7.3 dB: the face is 3 / 16 of the picture), the whole frame's dragged
    # down by the background
    assert res["psnr_portrait_frames"] > res["psnr_face_frames"] + 6 and res["psnr"] < res["psnr_face"]
    # an empty mask has no face region: nothing is averaged in
    rec = Reconstruction(with_frames=False)
    rec.add(render, gt, np.zeros_like(mask), None)
    assert rec.result()["psnr_face"] is None and rec.result()["psnr_face_frames"] is None
