"""Coarse head pose per frame: PnP of the landmarks against the canonical face, focal length by search.

Conventions used throughout the stabilizer: pixel coordinates are continuous (0 is the left edge, pixel
centres at i + 0.5, as the landmarks are); the camera is OpenCV's (x right, y down, z forward) with the
principal point at the crop centre; a pose maps canonical face points (cm) into the camera:
x_cam = R @ X + t. The canonical face has +y up, so R holds a 180 degree turn about x for a face that is
upright in the image.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass
class Poses:
    rotations: np.ndarray  # [N, 3, 3] canonical -> camera (OpenCV)
    translations: np.ndarray  # [N, 3] cm
    focal: float  # px, fl_x = fl_y
    resolution: int


def intrinsics(focal: float, resolution: int) -> np.ndarray:
    """OpenCV K for continuous pixel coordinates with the principal point at the crop centre. [3, 3]"""
    c = resolution / 2
    return np.array([[focal, 0, c], [0, focal, c], [0, 0, 1.0]])


def project(
    points: np.ndarray, rotation: np.ndarray, translation: np.ndarray, focal: float, resolution: int
) -> np.ndarray:
    """Canonical points [P, 3] -> pixels [P, 2] for one pose."""
    cam = points @ rotation.T + translation  # [P, 3]
    return focal * cam[:, :2] / cam[:, 2:3] + resolution / 2


def _solve(obj: np.ndarray, img: np.ndarray, k: np.ndarray, guess: tuple[np.ndarray, np.ndarray] | None):
    if guess is None:
        ok, rvec, tvec = cv2.solvePnP(obj, img, k, None, flags=cv2.SOLVEPNP_SQPNP)
        ok, rvec, tvec = cv2.solvePnP(obj, img, k, None, rvec, tvec, True, cv2.SOLVEPNP_ITERATIVE)
    else:
        ok, rvec, tvec = cv2.solvePnP(
            obj, img, k, None, guess[0].copy(), guess[1].copy(), True, cv2.SOLVEPNP_ITERATIVE
        )
    return rvec.reshape(3), tvec.reshape(3)


def _median_error(obj, lms, focal, resolution, frames) -> float:
    k = intrinsics(focal, resolution)
    errs = []
    for t in frames:
        rvec, tvec = _solve(obj, lms[t], k, None)
        proj, _ = cv2.projectPoints(obj, rvec, tvec, k, None)
        errs.append(np.sqrt(np.mean(np.sum((proj.reshape(-1, 2) - lms[t]) ** 2, axis=1))))
    return float(np.median(errs))


def search_focal(obj: np.ndarray, landmarks_2d: np.ndarray, frames: np.ndarray, resolution: int) -> float:
    """Focal length (px) with the lowest median PnP reprojection error over ``frames``: a coarse log grid,
    then golden-section refinement on log f around the best grid point."""
    obj = np.ascontiguousarray(obj, dtype=np.float64)
    lms = np.ascontiguousarray(landmarks_2d, dtype=np.float64)
    grid = resolution * 2.0 ** np.arange(-1.0, 4.51, 0.5)  # 0.5 R .. 22 R (about 90 to 3 degrees FOV)
    errs = [_median_error(obj, lms, f, resolution, frames) for f in grid]
    i = int(np.argmin(errs))
    lo, hi = np.log(grid[max(0, i - 1)]), np.log(grid[min(len(grid) - 1, i + 1)])
    g = (np.sqrt(5) - 1) / 2
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = (
        _median_error(obj, lms, np.exp(a), resolution, frames),
        _median_error(obj, lms, np.exp(b), resolution, frames),
    )
    for _ in range(8):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = _median_error(obj, lms, np.exp(a), resolution, frames)
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = _median_error(obj, lms, np.exp(b), resolution, frames)
    return float(np.exp((lo + hi) / 2))


def coarse_poses(
    canonical: np.ndarray,
    landmarks: np.ndarray,
    usable: np.ndarray,
    rigid_ids: np.ndarray,
    resolution: int,
    *,
    focal: float | None = None,
    search_frames: int = 40,
) -> Poses:
    """PnP pose per frame on the rigid landmarks; unusable frames copy the nearest usable pose.

    canonical [468, 3] cm; landmarks [N, 478, 3] crop px; usable [N] bool; rigid_ids [K].
    """
    n = len(landmarks)
    obj = np.ascontiguousarray(canonical[rigid_ids], dtype=np.float64)  # [K, 3]
    lms2d = np.ascontiguousarray(landmarks[:, rigid_ids, :2], dtype=np.float64)  # [N, K, 2]
    good = np.flatnonzero(usable)
    if focal is None:
        pick = good[np.linspace(0, len(good) - 1, min(search_frames, len(good))).round().astype(int)]
        focal = search_focal(obj, lms2d, pick, resolution)
    k = intrinsics(focal, resolution)
    rot = np.zeros((n, 3, 3))
    trans = np.zeros((n, 3))
    guess = None
    for t in good:
        rvec, tvec = _solve(obj, lms2d[t], k, guess)
        if tvec[2] <= 0:  # a flipped solution: start this frame from scratch
            rvec, tvec = _solve(obj, lms2d[t], k, None)
        guess = (rvec, tvec)
        rot[t] = cv2.Rodrigues(rvec)[0]
        trans[t] = tvec
    nearest = good[np.clip(np.searchsorted(good, np.arange(n)), 0, len(good) - 1)]
    rot[~usable] = rot[nearest[~usable]]
    trans[~usable] = trans[nearest[~usable]]
    return Poses(rot, trans, float(focal), resolution)
