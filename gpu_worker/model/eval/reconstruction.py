"""Reconstruction metrics of self-driven frames: PSNR, SSIM, face-region and portrait PSNR against two
references.

- ``gt/`` (keys ``psnr``, ``ssim``, ``psnr_face``, ``psnr_portrait``): the person over the background
  plate, what the head and torso are trained on. The render is head over torso over that same plate, so
  the background pixels agree for free.
- ``frames/`` (keys ``psnr_frames``, ``ssim_frames``, ``psnr_face_frames``, ``psnr_portrait_frames``):
  the real crops. The plate is only an estimate of the real background, so these are lower; they are
  what a viewer compares the output with.

``psnr_face`` / ``psnr_face_frames`` score the face region only (the squared error weighted by the
dataset's soft inner-face mask, averaged over the mask's weight): the pixels the model has to get
right and the portrait blend keeps, with no background or real-frame pixels to flatter the figure.

The portrait variants apply the Portrait-Sync blend (METHOD.md 2): the render inside the dataset's
soft inner-face mask, the reference frame elsewhere, compared with that reference (what the dubbing
output shows; the paper reports both PSNRs).
"""

from __future__ import annotations

import numpy as np

from gpu_worker.model import metrics as M


def portrait_blend(render: np.ndarray, frame: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Render [R, R, 3] inside the soft mask [R, R, 1] (0..1), ``frame`` [R, R, 3] outside."""
    return mask * render + (1 - mask) * frame


class Reconstruction:
    """Per-frame PSNR / SSIM, added frame by frame (no frame is kept), averaged by ``result``."""

    def __init__(self, with_frames: bool) -> None:
        self.with_frames = with_frames  # False: the dataset has no frames/ (the *_frames keys are None)
        self.values: dict[str, list[float]] = {
            k: []
            for k in (
                "psnr", "psnr_face", "psnr_portrait", "ssim",
                "psnr_frames", "psnr_face_frames", "ssim_frames", "psnr_portrait_frames",
            )
        }  # fmt: skip

    def add(self, render: np.ndarray, gt: np.ndarray, mask: np.ndarray, frame: np.ndarray | None) -> None:
        """render, gt, frame: [R, R, 3] in 0..1; mask: [R, R, 1] soft inner-face mask."""
        v = self.values
        v["psnr"].append(M.psnr(render, gt))
        face = M.psnr_masked(render, gt, mask)
        if face is not None:  # a frame whose mask is empty has no face region to score
            v["psnr_face"].append(face)
        v["psnr_portrait"].append(M.psnr(portrait_blend(render, gt, mask), gt))
        v["ssim"].append(M.ssim(render, gt))
        if self.with_frames and frame is not None:
            v["psnr_frames"].append(M.psnr(render, frame))
            face = M.psnr_masked(render, frame, mask)
            if face is not None:
                v["psnr_face_frames"].append(face)
            v["ssim_frames"].append(M.ssim(render, frame))
            v["psnr_portrait_frames"].append(M.psnr(portrait_blend(render, frame, mask), frame))

    def result(self) -> dict[str, float | None]:
        return {k: float(np.mean(vals)) if vals else None for k, vals in self.values.items()}
