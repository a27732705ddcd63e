"""Evaluation measures: PSNR, SSIM, LMD (mouth landmarks), sync confidence, mouth-opening correlation."""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np

from gpu_worker.model.dataparser import (
    EYE_OUTER_LEFT,
    EYE_OUTER_RIGHT,
    LIPS_INNER,
    LIPS_OUTER,
    eye_openness,
    mouth_opening,
)

MOUTH = LIPS_OUTER + LIPS_INNER


def psnr(pred: np.ndarray, gt: np.ndarray) -> float:
    """Images in 0..1."""
    mse = float(np.mean((np.asarray(pred, np.float64) - np.asarray(gt, np.float64)) ** 2))
    return float(10 * np.log10(1.0 / max(mse, 1e-12)))


def psnr_masked(pred: np.ndarray, gt: np.ndarray, weight: np.ndarray) -> float | None:
    """PSNR over a region only: the squared error weighted by ``weight`` [H, W, 1] (0..1, e.g. a soft face
    mask), averaged over the weighted pixels, so pixels outside the region count for nothing. Images in
    0..1; None where the region is empty."""
    w = np.asarray(weight, np.float64)
    total = float(w.sum()) * np.asarray(pred).shape[-1]
    if total < 1e-9:
        return None
    err = (np.asarray(pred, np.float64) - np.asarray(gt, np.float64)) ** 2
    mse = float((w * err).sum()) / total
    return float(10 * np.log10(1.0 / max(mse, 1e-12)))


def ssim(pred: np.ndarray, gt: np.ndarray) -> float:
    from skimage.metrics import structural_similarity

    win = min(7, pred.shape[0], pred.shape[1])
    win -= 1 - win % 2  # odd
    return float(structural_similarity(pred, gt, channel_axis=-1, data_range=1.0, win_size=win))


def lmd(pred_lms: np.ndarray, gt_lms: np.ndarray) -> tuple[float, float]:
    """Mouth landmark distance over frames, [F, 478, >=2] each -> (mean px, mean / inter-ocular distance)."""
    d = np.linalg.norm(pred_lms[:, MOUTH, :2] - gt_lms[:, MOUTH, :2], axis=-1).mean(-1)  # [F]
    iod = np.linalg.norm(gt_lms[:, EYE_OUTER_RIGHT, :2] - gt_lms[:, EYE_OUTER_LEFT, :2], axis=-1)
    return float(d.mean()), float((d / np.maximum(iod, 1e-6)).mean())


def eye_agreement(pred_lms: np.ndarray, gt_lms: np.ndarray) -> dict:
    """Do the rendered eyes open and close with the truth's? Landmarks [F, 478, >=2] each ->
    ``eye_openness_corr`` (Pearson r of lid gap / eye width, None where the truth's eyes never move),
    ``eyes_closed_frames`` (truth frames with the eyes under half their median openness) and
    ``eye_openness_closed`` (render / truth openness over those frames: 1 = blinks rendered, ~4 = not)."""
    pred, gt = eye_openness(pred_lms), eye_openness(gt_lms)
    closed = gt < 0.5 * np.median(gt)
    out = {"eye_openness_corr": pearson(pred, gt), "eyes_closed_frames": int(closed.sum())}
    out["eye_openness_closed"] = (
        float(pred[closed].mean() / max(gt[closed].mean(), 1e-6)) if closed.any() else None
    )
    return out


def pearson(a: np.ndarray, b: np.ndarray) -> float | None:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.size < 3 or a.std() < 1e-9 or b.std() < 1e-9:
        return None
    return float(np.corrcoef(a, b)[0, 1])


def speech_envelope(samples_16k: np.ndarray, n_frames: int, fps: int = 25) -> np.ndarray:
    """RMS of the audio over each video frame's 40 ms [N]."""
    hop = 16000 // fps
    y = np.asarray(samples_16k, np.float64).reshape(-1)
    y = np.pad(y, (0, max(0, n_frames * hop - y.size)))
    return np.sqrt((y[: n_frames * hop].reshape(n_frames, hop) ** 2).mean(-1))


def dark_mouth_opening(image: np.ndarray, lips_box: np.ndarray) -> float:
    """Image-based mouth opening where no landmarks are detected: share of dark pixels in the lips box
    (the open mouth's interior is the darkest part of the face)."""
    x0, y0, x1, y1 = (int(v) for v in lips_box)
    patch = np.asarray(image[y0:y1, x0:x1], np.float64)
    if patch.size == 0:
        return 0.0
    lum = patch @ np.array([0.299, 0.587, 0.114])
    return float((lum < 0.25).mean())


class MouthTracker:
    """MediaPipe landmarks for a sequence of frames (VIDEO mode), None where no face is found.

    One tracker per stream of frames: it carries state from each frame to the next (where to look, a
    temporal filter), so two streams fed to one tracker pull toward each other (eval/landmarks.py).
    """

    def __init__(self, landmarker) -> None:
        self.landmarker = landmarker
        self.t = 0

    def __call__(self, image: np.ndarray) -> np.ndarray | None:
        from gpu_worker.preprocess.landmarker import detect_faces

        rgb = (np.clip(image, 0, 1) * 255).astype(np.uint8) if image.dtype != np.uint8 else image
        self.t += 40
        faces = detect_faces(self.landmarker, rgb, self.t)
        return faces[0].landmarks if faces else None


@contextmanager
def mouth_tracker(settings):
    """A new MouthTracker with a landmarker of its own, or None where the face landmarker is unavailable
    (no model file)."""
    from shared.errors import SyncTalkError

    try:
        from gpu_worker.preprocess.landmarker import open_face_landmarker

        ctx = open_face_landmarker(settings)
        landmarker = ctx.__enter__()
    except (SyncTalkError, ImportError, RuntimeError):
        yield None
        return
    try:
        yield MouthTracker(landmarker)
    finally:
        ctx.__exit__(None, None, None)


__all__ = [
    "MouthTracker",
    "dark_mouth_opening",
    "eye_agreement",
    "lmd",
    "mouth_opening",
    "mouth_tracker",
    "pearson",
    "psnr",
    "speech_envelope",
    "ssim",
]
