"""The head box (manifest aabb): found from the head's silhouette, so large hair is not cut off."""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

from gpu_worker.preprocess.stabilizer.camera import AABB_LIMIT, head_aabb, pixel_rays, silhouette_extent

R, F = 128, 400.0  # image side, focal length (px)
INTR = (F, F, R / 2, R / 2)


def _cameras(n: int, seed: int = 0) -> np.ndarray:
    """Cameras 20 units away, turned by a few degrees about the head's centre: c2w [n, 4, 4]."""
    rng = np.random.default_rng(seed)
    c2w = np.tile(np.eye(4), (n, 1, 1))
    for i in range(n):
        rot = Rotation.from_euler("xyz", rng.uniform(-4, 4, 3), degrees=True).as_matrix()
        c2w[i, :3, :3] = rot
        c2w[i, :3, 3] = rot @ np.array([0.0, 0.0, 20.0])
    return c2w


def _disk_mask(c2w: np.ndarray, centre: tuple[float, float], radius: float) -> np.ndarray:
    """Pixels whose ray meets the plane z = 0 inside a disk: bool [R, R]."""
    ys, xs = np.mgrid[0:R, 0:R]
    o, d = pixel_rays(c2w, INTR, xs, ys)  # d [R, R, 3]
    t = -o[2] / d[..., 2]
    p = o[:2] + t[..., None] * d[..., :2]
    return np.hypot(p[..., 0] - centre[0], p[..., 1] - centre[1]) < radius


def test_silhouette_extent_recovers_the_head_outline_in_world_units():
    c2w = _cameras(12)
    masks = [(i, _disk_mask(c2w[i], (0.3, 0.5), 1.6)) for i in range(12)]
    lo, hi = silhouette_extent(c2w, INTR, masks)
    np.testing.assert_allclose(lo, [0.3 - 1.6, 0.5 - 1.6], atol=0.1)
    np.testing.assert_allclose(hi, [0.3 + 1.6, 0.5 + 1.6], atol=0.1)


def test_silhouette_extent_ignores_stray_pixels_and_a_bad_frame():
    c2w = _cameras(12, seed=1)
    masks = []
    for i in range(12):
        m = _disk_mask(c2w[i], (0.0, 0.0), 1.2)
        m[2, 2] = True  # a speck far from the head
        if i == 5:
            m[:, :] = True  # one frame's segmentation failed: the whole frame is "head"
        masks.append((i, m))
    lo, hi = silhouette_extent(c2w, INTR, masks)
    assert np.all(lo > -1.4) and np.all(hi < 1.4)


def test_silhouette_extent_without_any_head_is_none():
    c2w = _cameras(3)
    assert silhouette_extent(c2w, INTR, [(i, np.zeros((R, R), bool)) for i in range(3)]) is None


def test_head_box_grows_to_hold_big_hair_but_never_shrinks_below_the_face():
    face = np.random.default_rng(0).uniform([-7, -9, -2], [7, 9, 8], (400, 3))  # face points, cm
    origin = np.array([0.0, 0.0, -2.0])
    plain = np.array(head_aabb(face, origin))
    big_hair = np.array(head_aabb(face, origin, (np.array([-2.2, -1.0]), np.array([2.2, 2.4]))))
    assert big_hair[0] <= -2.2 and big_hair[3] >= 2.2 and big_hair[4] >= 2.4  # sides and top hold it
    # a small silhouette (a bad mask) leaves the face-point box as it is
    small = np.array(head_aabb(face, origin, (np.array([-0.1, -0.1]), np.array([0.1, 0.1]))))
    np.testing.assert_allclose(small, plain)
    # hair down to the shoulders does not drag the box down over the torso
    long_hair = np.array(head_aabb(face, origin, (np.array([-1.0, -6.0]), np.array([1.0, 1.0]))))
    assert long_hair[1] >= -0.9 - 0.5 * 1.8 - 1e-6
    huge = np.array(head_aabb(face, origin, (np.array([-50.0, -1.0]), np.array([50.0, 50.0]))))
    assert np.abs(huge).max() <= AABB_LIMIT
