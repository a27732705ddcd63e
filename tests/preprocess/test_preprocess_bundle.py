"""The Levenberg-Marquardt bundle adjustment on a synthetic head with known poses (no video needed)."""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

from gpu_worker.preprocess.stabilizer import levenberg
from gpu_worker.preprocess.stabilizer.bundle_adjust import bundle_adjust
from gpu_worker.preprocess.stabilizer.pose_init import Poses, project
from gpu_worker.preprocess.stabilizer.tracking import Tracks

RES, FOCAL = 256, 900.0


def _scene(n: int = 40, seed: int = 0):
    rng = np.random.default_rng(seed)
    vertices = rng.normal(size=(60, 3)) * [6.0, 8.0, 3.0]  # a head-sized point cloud, cm
    points = rng.normal(size=(25, 3)) * [5.0, 6.0, 2.0]
    t = np.arange(n) / 25
    euler = np.stack([8 * np.sin(2 * np.pi * 0.3 * t), 12 * np.sin(2 * np.pi * 0.2 * t), 3 * np.cos(t)], 1)
    flip = Rotation.from_euler("x", 180, degrees=True)  # canonical +y up -> camera y down
    rot = (Rotation.from_euler("xyz", euler, degrees=True) * flip).as_matrix()  # [N, 3, 3]
    trans = np.stack([np.sin(t), 0.5 * np.cos(t), np.full(n, 60.0)], 1)  # [N, 3] cm
    lms = np.stack([project(vertices, rot[i], trans[i], FOCAL, RES) for i in range(n)])  # [N, V, 2]
    obs = np.stack([project(points, rot[i], trans[i], FOCAL, RES) for i in range(n)])  # [N, J, 2]
    lms += rng.normal(scale=0.8, size=lms.shape)  # landmarks jitter; tracks are sharper
    obs += rng.normal(scale=0.2, size=obs.shape)
    landmarks = np.concatenate([lms, np.zeros((n, len(vertices), 1))], -1).astype(np.float32)
    frame = np.repeat(np.arange(n), len(points)).astype(np.int32)
    track = np.tile(np.arange(len(points)), n).astype(np.int32)
    tracks = Tracks(frame, track, obs.reshape(-1, 2).astype(np.float32))
    return vertices, points, rot, trans, landmarks, tracks, rng


def test_bundle_adjustment_recovers_poses_from_a_noisy_start():
    vertices, points, rot, trans, landmarks, tracks, rng = _scene()
    n = len(rot)
    noise = Rotation.from_rotvec(rng.normal(scale=np.radians(1.5), size=(n, 3)))
    start = Poses(
        (noise * Rotation.from_matrix(rot)).as_matrix(),
        trans + rng.normal(scale=0.5, size=(n, 3)),
        1.05 * FOCAL,
        RES,
    )
    usable = np.ones(n, bool)
    usable[17] = False  # a gap: not smoothed over, filled from a neighbour
    track_points = points + rng.normal(scale=0.3, size=points.shape)
    ba = bundle_adjust(start, vertices, np.ones(len(vertices)), landmarks, usable, tracks, track_points)

    def err(r):
        rel = Rotation.from_matrix(r[usable]) * Rotation.from_matrix(rot[usable]).inv()
        return np.degrees(rel.magnitude())

    before, after = err(start.rotations), err(ba.poses.rotations)
    assert after.mean() < 0.25 * before.mean() and after.mean() < 0.4
    assert abs(ba.poses.focal - FOCAL) < 0.03 * FOCAL
    s = ba.stats
    assert s["track_reprojection_px_after"] < 0.5 < s["track_reprojection_px_before"]
    assert s["landmark_reprojection_px_after"] < s["landmark_reprojection_px_before"]
    assert 1 <= s["iterations"] <= 30
    gap = ba.poses.rotations[17]  # the unusable frame holds a neighbour's pose
    assert any(np.array_equal(gap, ba.poses.rotations[i]) for i in (16, 18))


def test_normal_equations_match_the_numerical_gradient():
    """The assembled gradient (pose and point blocks) is the cost's derivative: checks every Jacobian."""
    vertices, points, rot, trans, landmarks, tracks, rng = _scene(n=6, seed=1)
    p = levenberg.Problem(
        lm_obs=landmarks[:, :, :2].astype(np.float64), lm_weight=np.full(len(vertices), 0.05),
        tr_frame=tracks.frame.astype(np.int64), tr_point=tracks.track.astype(np.int64),
        tr_obs=tracks.xy.astype(np.float64), tr_weight=0.2, smooth_mask=np.array([1.0, 1.0, 0.0, 1.0]),
        smooth_rot=50.0, smooth_trans=3.0, shape0=vertices + 0.5, points0=points - 0.3,
        shape_prior=1.0, point_prior=0.1, huber=1.5, centre=RES / 2,
    )  # fmt: skip
    s = levenberg.State(rot, trans + 0.3, vertices + 0.2, points + 0.1, float(np.log(FOCAL * 1.02)))
    _, _, _, g_pose, g_point = levenberg._normal_equations(p, s)
    n_pose, n_point = len(g_pose), len(g_point)
    for k in (
        rng.choice(n_pose, 8, replace=False).tolist()
        + (n_pose + rng.choice(n_point, 8, replace=False)).tolist()
    ):
        h = 1e-6
        dp, dc = np.zeros(n_pose), np.zeros(n_point)
        (dp if k < n_pose else dc)[k % n_pose if k < n_pose else k - n_pose] = h
        plus = levenberg.cost(p, levenberg._step(s, dp, dc))
        minus = levenberg.cost(p, levenberg._step(s, -dp, -dc))
        numeric = (plus - minus) / (2 * h) / 2  # the assembled gradient drops the common factor 2
        analytic = g_pose[k] if k < n_pose else g_point[k - n_pose]
        assert abs(numeric - analytic) <= 1e-4 * max(1.0, abs(analytic)), k
