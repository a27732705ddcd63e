"""Bundle adjustment of head poses, 3D points and focal length (torch, full batch L-BFGS).

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


def _rodrigues(w):
    import torch

    theta2 = (w * w).sum(-1, keepdim=True)[..., None]  # [U, 1, 1]
    theta = torch.sqrt(theta2 + 1e-18)
    k = torch.zeros(w.shape[0], 3, 3, dtype=w.dtype)
    k[:, 0, 1], k[:, 0, 2], k[:, 1, 2] = -w[:, 2], w[:, 1], -w[:, 0]
    k = k - k.transpose(1, 2)
    eye = torch.eye(3, dtype=w.dtype).expand_as(k)
    # sin(theta)/theta and (1 - cos)/theta^2 with their small-angle limits.
    a = torch.where(theta < 1e-6, 1 - theta2 / 6, torch.sin(theta) / theta)
    b = torch.where(theta < 1e-6, 0.5 - theta2 / 24, (1 - torch.cos(theta)) / (theta2 + 1e-30))
    return eye + a * k + b * (k @ k)


def _pseudo_huber(err2, delta: float = HUBER_PX):
    import torch

    return delta * delta * (torch.sqrt(1 + err2 / (delta * delta)) - 1)


def bundle_adjust(
    poses: Poses,
    vertices: np.ndarray,
    rigidity: np.ndarray,
    landmarks: np.ndarray,
    usable: np.ndarray,
    tracks: Tracks,
    track_points: np.ndarray,
    *,
    max_iter: int = 150,
) -> BundleResult:
    """Refine ``poses`` (usable frames) jointly with the face shape, track points and focal length.

    vertices [468, 3] cm; rigidity [468]; landmarks [N, 478, 3] px; usable [N]; tracks + points [J, 3].
    """
    import torch

    dt = torch.float64
    res = poses.resolution
    frames = np.flatnonzero(usable)  # [U]
    slot = np.full(len(usable), -1)
    slot[frames] = np.arange(len(frames))
    lm_ids = np.flatnonzero(rigidity >= MIN_WEIGHT)
    lm_w = torch.tensor(rigidity[lm_ids], dtype=dt)  # [K]
    lm_obs = torch.tensor(landmarks[frames][:, lm_ids, :2], dtype=dt)  # [U, K, 2]

    ok = np.isfinite(track_points).all(1)
    obs = ok[tracks.track] & (slot[tracks.frame] >= 0)
    tr_frame = torch.tensor(slot[tracks.frame[obs]], dtype=torch.long)  # [M]
    tr_id = torch.tensor(tracks.track[obs], dtype=torch.long)  # [M]
    tr_xy = torch.tensor(tracks.xy[obs], dtype=dt)  # [M, 2]

    r0 = torch.tensor(poses.rotations[frames], dtype=dt)  # [U, 3, 3]
    t0 = torch.tensor(poses.translations[frames], dtype=dt)  # [U, 3]
    shape0 = torch.tensor(vertices[lm_ids], dtype=dt)  # [K, 3]
    pts0 = torch.tensor(np.nan_to_num(track_points), dtype=dt)  # [J, 3]
    z = float(np.median(poses.translations[frames, 2]))
    px_per_rad = poses.focal * 8.0 / z  # a point 8 cm from the head centre
    px_per_cm = poses.focal / z

    w = torch.zeros(len(frames), 3, dtype=dt, requires_grad=True)
    t = t0.clone().requires_grad_(True)
    log_f = torch.tensor(np.log(poses.focal), dtype=dt, requires_grad=True)
    shape = shape0.clone().requires_grad_(True)
    pts = pts0.clone().requires_grad_(True)
    n_u = max(1, len(frames))

    def terms():
        rot = _rodrigues(w) @ r0  # [U, 3, 3]
        f = torch.exp(log_f)
        cam = torch.einsum("uij,kj->uki", rot, shape) + t[:, None, :]  # [U, K, 3]
        uv = f * cam[..., :2] / cam[..., 2:3] + res / 2
        lm_cost = (_pseudo_huber(((uv - lm_obs) ** 2).sum(-1)) * lm_w).sum()
        tr_cam = torch.einsum("mij,mj->mi", rot[tr_frame], pts[tr_id]) + t[tr_frame]  # [M, 3]
        tr_uv = f * tr_cam[:, :2] / tr_cam[:, 2:3] + res / 2
        tr_err2 = ((tr_uv - tr_xy) ** 2).sum(-1)
        tr_cost = _pseudo_huber(tr_err2).sum()
        smooth = torch.zeros((), dtype=dt)
        if len(frames) >= 3:
            # Only across runs of consecutive frames: a gap is not a jump to smooth over.
            consecutive = torch.tensor((frames[2:] - frames[:-2]) == 2)
            d2r = (rot[2:] - 2 * rot[1:-1] + rot[:-2]).pow(2).sum((-1, -2)) * px_per_rad**2
            d2t = (t[2:] - 2 * t[1:-1] + t[:-2]).pow(2).sum(-1) * px_per_cm**2
            smooth = ((d2r + d2t) * consecutive).sum()
        prior = SHAPE_PRIOR * ((shape - shape0) ** 2).sum() + POINT_PRIOR * ((pts - pts0) ** 2).sum()
        total = (tr_cost + LANDMARK_WEIGHT * lm_cost + SMOOTH_WEIGHT * smooth) / n_u + prior
        return total, rot, uv, tr_err2

    with torch.no_grad():
        _, _, uv_before, tr_before = terms()
    optimizer = torch.optim.LBFGS(
        [w, t, log_f, shape, pts], lr=1.0, max_iter=max_iter, history_size=20,
        tolerance_grad=1e-10, tolerance_change=1e-12, line_search_fn="strong_wolfe",
    )  # fmt: skip

    def closure():
        optimizer.zero_grad()
        loss = terms()[0]
        loss.backward()
        return loss

    # The tensors are small ([U, K, 3]): one thread beats several (thread hand-off costs more than the math).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        optimizer.step(closure)
    finally:
        torch.set_num_threads(threads)
    with torch.no_grad():
        loss, rot, uv_after, tr_after = terms()

    rigid = torch.tensor(rigidity[lm_ids] >= 1.0)
    err_before = (uv_before - lm_obs).norm(dim=-1)[:, rigid]
    err_after = (uv_after - lm_obs).norm(dim=-1)[:, rigid]
    rot_all = poses.rotations.copy()
    trans_all = poses.translations.copy()
    rot_all[frames] = rot.numpy()
    trans_all[frames] = t.detach().numpy()
    nearest = frames[np.clip(np.searchsorted(frames, np.arange(len(usable))), 0, len(frames) - 1)]
    rot_all[~usable] = rot_all[nearest[~usable]]
    trans_all[~usable] = trans_all[nearest[~usable]]
    refined_shape = vertices.copy()
    refined_shape[lm_ids] = shape.detach().numpy()
    points = np.full_like(track_points, np.nan)
    points[ok] = pts.detach().numpy()[ok]
    stats = {
        "landmark_reprojection_px_before": float(err_before.median()) if err_before.numel() else None,
        "landmark_reprojection_px_after": float(err_after.median()) if err_after.numel() else None,
        "track_reprojection_px_before": float(tr_before.sqrt().median()) if tr_before.numel() else None,
        "track_reprojection_px_after": float(tr_after.sqrt().median()) if tr_after.numel() else None,
        "focal_before": poses.focal,
        "focal_after": float(torch.exp(log_f.detach())),
        "tracks_used": int(ok.sum()),
        "track_observations": int(obs.sum()),
        "final_cost": float(loss),
    }
    refined = Poses(rot_all, trans_all, float(torch.exp(log_f.detach())), res)
    return BundleResult(refined, refined_shape, points, stats)
