"""Bundle adjustment of head poses, 3D points and focal length (Levenberg-Marquardt, levenberg.py).

Unknowns: per usable frame a rotation correction and a translation; the person's own 3D face shape
(the landmark points, starting from the canonical face); the 3D point of every rigid keypoint track;
one focal length. Cost: pseudo-Huber reprojection of the tracks, the same for the landmarks weighted by
their rigidity, a small second-difference smoothness prior on the poses, and weak priors holding the
points near where they started (which also fixes the gauge: the similarity transform the images cannot
see).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gpu_worker.preprocess.stabilizer.pose_init import Poses, project
from gpu_worker.preprocess.stabilizer.tracking import Tracks

HUBER_PX = 1.5
LANDMARK_WEIGHT = 0.2  # landmarks are noisier than tracks frame to frame, but never drift
SMOOTH_WEIGHT = 10.0  # in "observations": the second difference of a pose costs like this many points
SHAPE_PRIOR = 1.0  # per landmark, per cm^2 of departure from the canonical face
POINT_PRIOR = 0.01  # per track point, per cm^2 of departure from its first back-projection
MIN_WEIGHT = 0.2  # landmarks below this rigidity are left out of the cost entirely


@dataclass
class BundleResult:
    poses: Poses
    shape: np.ndarray  # [468, 3] refined landmark points, cm (canonical frame)
    points: np.ndarray  # [J, 3] track points (NaN where a track could not be placed on the face)
    stats: dict


def backproject_tracks(
    tracks: Tracks, poses: Poses, vertices: np.ndarray, triangles: np.ndarray
) -> np.ndarray:
    """Place each track's first observation on the posed canonical mesh (front-most triangle hit),
    returning canonical-frame 3D points [J, 3] (NaN where the pixel misses the face)."""
    n_tracks = tracks.n_tracks
    points = np.full((n_tracks, 3), np.nan)
    if n_tracks == 0:
        return points
    first = np.full(n_tracks, len(tracks.frame), np.int64)
    np.minimum.at(first, tracks.track, np.arange(len(tracks.track)))
    for t in np.unique(tracks.frame[first]):
        sel = np.flatnonzero(tracks.frame[first] == t)
        uv = tracks.xy[first[sel]].astype(np.float64)  # [S, 2]
        cam = vertices @ poses.rotations[t].T + poses.translations[t]  # [V, 3]
        v2 = project(
            vertices, poses.rotations[t], poses.translations[t], poses.focal, poses.resolution
        )  # [V, 2]
        a, b, c = v2[triangles[:, 0]], v2[triangles[:, 1]], v2[triangles[:, 2]]  # [F, 2] each
        det = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (c[:, 0] - a[:, 0]) * (b[:, 1] - a[:, 1])  # [F]
        det = np.where(np.abs(det) < 1e-9, np.nan, det)
        d = uv[:, None, :] - a[None]  # [S, F, 2]
        l1 = (d[..., 0] * (c[:, 1] - a[:, 1]) - (c[:, 0] - a[:, 0]) * d[..., 1]) / det  # [S, F]
        l2 = ((b[:, 0] - a[:, 0]) * d[..., 1] - d[..., 0] * (b[:, 1] - a[:, 1])) / det
        l0 = 1 - l1 - l2
        inside = (l0 >= -1e-6) & (l1 >= -1e-6) & (l2 >= -1e-6)
        depth = cam[triangles, 2].mean(1)  # [F]
        score = np.where(inside, depth[None], np.inf)  # [S, F]
        best = np.argmin(score, axis=1)  # [S]
        hit = np.isfinite(score[np.arange(len(sel)), best])
        tri = triangles[best]  # [S, 3]
        bary = np.stack([l0, l1, l2], -1)[np.arange(len(sel)), best]  # [S, 3]
        pts = (bary[..., None] * vertices[tri]).sum(1)  # [S, 3]
        points[tracks.track[first[sel]][hit]] = pts[hit]
    return points


def bundle_adjust(
    poses: Poses,
    vertices: np.ndarray,
    rigidity: np.ndarray,
    landmarks: np.ndarray,
    usable: np.ndarray,
    tracks: Tracks,
    track_points: np.ndarray,
    *,
    max_iter: int = 30,
) -> BundleResult:
    """Refine ``poses`` (usable frames) jointly with the face shape, track points and focal length
    (Levenberg-Marquardt, see levenberg.py).

    vertices [468, 3] cm; rigidity [468]; landmarks [N, 478, 3] px; usable [N]; tracks + points [J, 3].
    """
    from gpu_worker.preprocess.stabilizer import levenberg as lm

    res = poses.resolution
    frames = np.flatnonzero(usable)  # [U]
    slot = np.full(len(usable), -1)
    slot[frames] = np.arange(len(frames))
    lm_ids = np.flatnonzero(rigidity >= MIN_WEIGHT)
    ok = np.isfinite(track_points).all(1)
    obs = ok[tracks.track] & (slot[tracks.frame] >= 0)
    z = float(np.median(poses.translations[frames, 2]))
    px_per_rad = poses.focal * 8.0 / z  # a point 8 cm from the head centre
    px_per_cm = poses.focal / z
    n_u = max(1, len(frames))
    problem = lm.Problem(
        lm_obs=landmarks[frames][:, lm_ids, :2].astype(np.float64),  # [U, K, 2]
        lm_weight=LANDMARK_WEIGHT * rigidity[lm_ids].astype(np.float64) / n_u,  # [K]
        tr_frame=slot[tracks.frame[obs]],  # [M]
        tr_point=tracks.track[obs].astype(np.int64),  # [M]
        tr_obs=tracks.xy[obs].astype(np.float64),  # [M, 2]
        tr_weight=1.0 / n_u,
        # Only across runs of consecutive frames: a gap is not a jump to smooth over.
        smooth_mask=((frames[2:] - frames[:-2]) == 2).astype(np.float64),  # [U - 2]
        smooth_rot=SMOOTH_WEIGHT * px_per_rad**2 / n_u,
        smooth_trans=SMOOTH_WEIGHT * px_per_cm**2 / n_u,
        shape0=vertices[lm_ids].astype(np.float64),
        points0=np.nan_to_num(track_points).astype(np.float64),
        shape_prior=SHAPE_PRIOR,
        point_prior=POINT_PRIOR,
        huber=HUBER_PX,
        centre=res / 2,
    )
    start = lm.State(
        rot=poses.rotations[frames].astype(np.float64),
        trans=poses.translations[frames].astype(np.float64),
        shape=problem.shape0.copy(),
        points=problem.points0.copy(),
        log_f=float(np.log(poses.focal)),
    )
    state, figures = lm.solve(problem, start, max_iter=max_iter)

    def reprojection(st: lm.State) -> tuple[np.ndarray, np.ndarray]:
        f = np.exp(st.log_f)
        cam = np.einsum("uij,kj->uki", st.rot, st.shape) + st.trans[:, None]  # [U, K, 3]
        lm_err = np.linalg.norm(f * cam[..., :2] / cam[..., 2:] + res / 2 - problem.lm_obs, axis=-1)
        fr, pt = problem.tr_frame, problem.tr_point
        tr_cam = np.einsum("mij,mj->mi", st.rot[fr], st.points[pt]) + st.trans[fr]  # [M, 3]
        tr_err = np.linalg.norm(f * tr_cam[:, :2] / tr_cam[:, 2:] + res / 2 - problem.tr_obs, axis=-1)
        return lm_err[:, rigidity[lm_ids] >= 1.0], tr_err  # rigid landmarks [U, K'], tracks [M]

    lm_before, tr_before = reprojection(start)
    lm_after, tr_after = reprojection(state)
    focal = float(np.exp(state.log_f))
    rot_all = poses.rotations.copy()
    trans_all = poses.translations.copy()
    rot_all[frames] = state.rot
    trans_all[frames] = state.trans
    nearest = frames[np.clip(np.searchsorted(frames, np.arange(len(usable))), 0, len(frames) - 1)]
    rot_all[~usable] = rot_all[nearest[~usable]]
    trans_all[~usable] = trans_all[nearest[~usable]]
    refined_shape = vertices.copy()
    refined_shape[lm_ids] = state.shape
    points = np.full_like(track_points, np.nan)
    points[ok] = state.points[ok]
    median = lambda x: float(np.median(x)) if x.size else None  # noqa: E731
    stats = {
        "landmark_reprojection_px_before": median(lm_before),
        "landmark_reprojection_px_after": median(lm_after),
        "track_reprojection_px_before": median(tr_before),
        "track_reprojection_px_after": median(tr_after),
        "focal_before": poses.focal,
        "focal_after": focal,
        "tracks_used": int(ok.sum()),
        "track_observations": int(obs.sum()),
        **figures,
    }
    return BundleResult(Poses(rot_all, trans_all, focal, res), refined_shape, points, stats)
