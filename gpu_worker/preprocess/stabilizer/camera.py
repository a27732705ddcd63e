"""From head poses to NeRF cameras, the head box, and the pose quality figures (jitter, error vs truth).

World = the head's canonical frame (the head stands still, the camera moves), 1 unit = 10 cm, origin
near the head's centre. Cameras are camera-to-world 4x4 in the NeRF/OpenGL convention (x right, y up,
looking down -z).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from scipy.spatial.transform import Rotation

CM_PER_UNIT = 10.0
# Head centre in canonical cm: the face mesh spans the face's front (nose tip at z = +7.6); the skull's
# centre lies a few cm behind the ear line.
HEAD_CENTRE_CM = np.array([0.0, 0.0, -2.0])
CV_TO_GL = np.diag([1.0, -1.0, -1.0])


def head_centre(shape: np.ndarray) -> np.ndarray:
    """Origin of the world in canonical cm: middle of the face's x/y extent, a few cm behind it. [3]"""
    lo, hi = shape.min(0), shape.max(0)
    return np.array([(lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, HEAD_CENTRE_CM[2]])


def camera_to_world(rotations: np.ndarray, translations: np.ndarray, origin_cm: np.ndarray) -> np.ndarray:
    """Poses x_cam = R X + t (OpenCV camera, canonical cm) -> NeRF camera-to-world matrices. [N, 4, 4]"""
    n = len(rotations)
    c2w = np.tile(np.eye(4), (n, 1, 1))
    rt = rotations.transpose(0, 2, 1)  # [N, 3, 3] camera -> canonical
    centre = -np.einsum("nij,nj->ni", rt, translations)  # [N, 3] camera centre, canonical cm
    c2w[:, :3, :3] = rt @ CV_TO_GL
    c2w[:, :3, 3] = (centre - origin_cm) / CM_PER_UNIT
    return c2w


# Largest half-extent of the head box in world units (30 cm from the head's centre): a bound on what a
# mis-segmented frame can do to the box, not a size any head reaches.
AABB_LIMIT = 3.0
# Margin around the head's silhouette, as a share of the face points' size.
SILHOUETTE_PAD = 0.15


def head_aabb(
    shape: np.ndarray, origin_cm: np.ndarray, silhouette: tuple[np.ndarray, np.ndarray] | None = None
) -> list[float]:
    """A box around the whole head in world units: the face points plus room for hair, ears and the back
    of the skull. ``silhouette``: the x/y extent of the head mask in world units (silhouette_extent);
    the box then grows to hold it, so large hair is not cut off (the head NeRF renders nothing outside
    the box, and a clipped silhouette was the largest error on the sample subject)."""
    p = (shape - origin_cm) / CM_PER_UNIT
    lo, hi = p.min(0), p.max(0)
    size = hi - lo
    chin = lo[1]
    # the silhouette only ever grows the box (np.minimum / np.maximum): never below the face points
    lo = lo - np.array([0.25, 0.15, 0.0]) * size
    hi = hi + np.array([0.25, 0.35, 0.05]) * size
    if silhouette is not None:
        # slack around the outline: the hair at the sides lies in front of and behind the plane the
        # outline was cast onto, the mask's edge is soft, and the poses are not exact
        pad = SILHOUETTE_PAD * size[:2]
        s_lo, s_hi = silhouette
        lo[:2] = np.minimum(lo[:2], s_lo - pad)
        hi[:2] = np.maximum(hi[:2], s_hi + pad)
        # below the chin the head mask can run into long hair over the shoulders: the torso's job
        lo[1] = max(lo[1], chin - 0.5 * size[1])
    depth = max(hi[2], -lo[2], 0.9)
    lo[2], hi[2] = -depth, hi[2]
    return np.clip(np.concatenate([lo, hi]), -AABB_LIMIT, AABB_LIMIT).round(4).tolist()


def pixel_rays(
    c2w: np.ndarray, intrinsics: tuple[float, float, float, float], xs: np.ndarray, ys: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Rays through pixel centres (xs, ys [K]) of a camera (c2w [4, 4], OpenGL; intrinsics fx, fy, cx,
    cy) -> origin [3], directions [K, 3] (not normalized). The NumPy twin of the model's pixel_rays."""
    fx, fy, cx, cy = intrinsics
    d_cam = np.stack([(xs + 0.5 - cx) / fx, -(ys + 0.5 - cy) / fy, -np.ones(np.shape(xs))], -1)
    return c2w[:3, 3], d_cam @ c2w[:3, :3].T


def silhouette_extent(
    c2w: np.ndarray, intrinsics: tuple[float, float, float, float], masks: Iterable[tuple[int, np.ndarray]]
) -> tuple[np.ndarray, np.ndarray] | None:
    """World x/y extent (lo [2], hi [2]) of the head's silhouette: each mask's pixels (frame index, bool
    [R, R]) are cast from that frame's camera (c2w [N, 4, 4], intrinsics fx, fy, cx, cy) onto the plane
    z = 0 through the head's centre. Per frame the 0.5 / 99.5 percentiles (stray pixels do not count);
    across frames the 90th percentile of each side (a few bad masks do not count). None: no mask with a
    head in it."""
    lows, highs = [], []
    for i, mask in masks:
        ys, xs = np.nonzero(mask)
        if xs.size < 50:
            continue
        o, d = pixel_rays(c2w[i], intrinsics, xs, ys)
        ok = np.abs(d[:, 2]) > 1e-6  # rays parallel to the plane never reach it
        t = -o[2] / d[ok, 2]
        xy = o[:2] + t[:, None] * d[ok, :2]  # [K, 2]
        xy = xy[t > 0]
        if len(xy) < 50:
            continue
        lows.append(np.percentile(xy, 0.5, axis=0))
        highs.append(np.percentile(xy, 99.5, axis=0))
    if not lows:
        return None
    return np.percentile(np.stack(lows), 10, axis=0), np.percentile(np.stack(highs), 90, axis=0)


def rotation_jitter_deg(rotations: np.ndarray, usable: np.ndarray | None = None) -> float:
    """Mean size of the second difference of the head rotation (degrees per frame^2): what a viewer sees
    as shake, insensitive to smooth motion. Only triples of consecutive usable frames count."""
    rv = Rotation.from_matrix(rotations).as_rotvec()  # [N, 3]
    d2 = np.linalg.norm(rv[2:] - 2 * rv[1:-1] + rv[:-2], axis=1)
    if usable is not None:
        d2 = d2[usable[2:] & usable[1:-1] & usable[:-2]]
    return float(np.degrees(d2.mean())) if len(d2) else 0.0


def translation_jitter(translations: np.ndarray, usable: np.ndarray | None = None) -> float:
    """Mean size of the second difference of the head position (same units as ``translations``)."""
    d2 = np.linalg.norm(translations[2:] - 2 * translations[1:-1] + translations[:-2], axis=1)
    if usable is not None:
        d2 = d2[usable[2:] & usable[1:-1] & usable[:-2]]
    return float(d2.mean()) if len(d2) else 0.0


def _project_so3(m: np.ndarray) -> np.ndarray:
    u, _, vt = np.linalg.svd(m)
    d = np.sign(np.linalg.det(u @ vt))
    return u @ np.diag([1, 1, d]) @ vt


def rotation_errors_deg(estimated: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per-frame angle (degrees) between estimated and true head rotations [N, 3, 3], after the constant
    rotations that relate the two head frames and camera conventions are fitted away (OpenCV vs OpenGL
    camera axes are both tried). [N]"""
    best = None
    for a in (np.eye(3), CV_TO_GL):
        aligned = np.einsum("ij,njk->nik", a, estimated)  # [N, 3, 3]
        b = _project_so3(np.einsum("nji,njk->ik", aligned, truth))  # mean of aligned^T @ truth
        diff = np.einsum("nij,jk,nlk->nil", aligned, b, truth)  # aligned @ b @ truth^T
        cos = np.clip((np.trace(diff, axis1=1, axis2=2) - 1) / 2, -1, 1)
        err = np.degrees(np.arccos(cos))
        if best is None or err.mean() < best.mean():
            best = err
    return best
