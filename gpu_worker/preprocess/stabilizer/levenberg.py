"""Levenberg-Marquardt for the stabilizer's bundle adjustment, with the poses eliminated by a banded solve.

The cost (see bundle_adjust.py) is a sum of squared residuals, each robust one re-weighted per iteration
(IRLS for the pseudo-Huber loss). Unknowns: per frame a rotation increment and a translation (6 each, the
"pose" block), and the shared ones: the face shape, the track points and log focal (the "point" block).
Every reprojection couples one pose with one point, the smoothness prior couples poses at most two
frames apart, so the pose block of the normal equations is banded (bandwidth 17) and eliminating it costs
O(frames): the reduced system has the size of the point block (~1000 unknowns) whatever the clip's length.
Second-order convergence makes this far cheaper than first-order L-BFGS (about 10 iterations instead of
150 evaluations with backward passes).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import scipy.linalg as sla

log = logging.getLogger(__name__)

BAND = 17  # lower bandwidth of the pose block: coupling reaches two frames (12 rows) + 5 within a block


@dataclass
class Problem:
    """Observations and weights; everything in float64. U frames, K shape points, J track points."""

    lm_obs: np.ndarray  # [U, K, 2] landmark pixels
    lm_weight: np.ndarray  # [K] landmark weight (rigidity * landmark weight / U)
    tr_frame: np.ndarray  # [M] slot of each track observation
    tr_point: np.ndarray  # [M] track point of each observation
    tr_obs: np.ndarray  # [M, 2] track pixels
    tr_weight: float  # per track observation (1 / U)
    smooth_mask: np.ndarray  # [U - 2] 1 where slots i, i+1, i+2 are consecutive frames
    smooth_rot: float  # weight of the squared second difference of rotation matrices
    smooth_trans: float  # weight of the squared second difference of translations (cm^2)
    shape0: np.ndarray  # [K, 3] prior centre of the shape points
    points0: np.ndarray  # [J, 3] prior centre of the track points
    shape_prior: float
    point_prior: float
    huber: float  # pseudo-Huber delta, px
    centre: float  # principal point (both axes), px


@dataclass
class State:
    rot: np.ndarray  # [U, 3, 3]
    trans: np.ndarray  # [U, 3]
    shape: np.ndarray  # [K, 3]
    points: np.ndarray  # [J, 3]
    log_f: float


def rodrigues(w: np.ndarray) -> np.ndarray:
    """Rotation vectors [U, 3] -> matrices [U, 3, 3]."""
    theta = np.linalg.norm(w, axis=1)[:, None, None]  # [U, 1, 1]
    k = skew(w)
    small = theta < 1e-8
    a = np.where(small, 1.0, np.sin(theta) / np.where(small, 1.0, theta))
    b = np.where(small, 0.5, (1 - np.cos(theta)) / np.where(small, 1.0, theta**2))
    return np.eye(3) + a * k + b * (k @ k)


def skew(v: np.ndarray) -> np.ndarray:
    """[..., 3] -> [..., 3, 3] cross-product matrices."""
    out = np.zeros(v.shape[:-1] + (3, 3))
    out[..., 0, 1], out[..., 0, 2], out[..., 1, 2] = -v[..., 2], v[..., 1], -v[..., 0]
    return out - np.swapaxes(out, -1, -2)


def _project(p: Problem, s: State, cam: np.ndarray, obs: np.ndarray):
    """Residuals [.., 2] and d(residual)/d(camera point) [.., 2, 3] for camera-frame points [.., 3]."""
    f = np.exp(s.log_f)
    inv_z = 1.0 / cam[..., 2]
    xy = cam[..., :2] * inv_z[..., None]
    res = f * xy + p.centre - obs
    d = np.zeros(cam.shape[:-1] + (2, 3))
    d[..., 0, 0] = d[..., 1, 1] = f * inv_z
    d[..., :, 2] = -f * xy * inv_z[..., None]
    return res, d, f * xy


def _robust(p: Problem, res: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pseudo-Huber cost [..] and IRLS weight rho'(|r|^2) [..] of residuals [.., 2]."""
    s = (res**2).sum(-1) / p.huber**2
    root = np.sqrt(1 + s)
    return p.huber**2 * (root - 1), 0.5 / root


def cost(p: Problem, s: State) -> float:
    lm_cam = np.einsum("uij,kj->uki", s.rot, s.shape) + s.trans[:, None]  # [U, K, 3]
    lm_res = _project(p, s, lm_cam, p.lm_obs)[0]
    tr_cam = np.einsum("mij,mj->mi", s.rot[p.tr_frame], s.points[p.tr_point]) + s.trans[p.tr_frame]
    tr_res = _project(p, s, tr_cam, p.tr_obs)[0]
    total = (_robust(p, lm_res)[0] * p.lm_weight).sum() + p.tr_weight * _robust(p, tr_res)[0].sum()
    if len(s.rot) >= 3:
        d2r = s.rot[2:] - 2 * s.rot[1:-1] + s.rot[:-2]
        d2t = s.trans[2:] - 2 * s.trans[1:-1] + s.trans[:-2]
        total += (
            p.smooth_mask * (p.smooth_rot * (d2r**2).sum((1, 2)) + p.smooth_trans * (d2t**2).sum(1))
        ).sum()
    total += p.shape_prior * ((s.shape - p.shape0) ** 2).sum()
    total += p.point_prior * ((s.points - p.points0) ** 2).sum()
    return float(total)


def _sum_by(idx: np.ndarray, x: np.ndarray, n: int) -> np.ndarray:
    """Sum rows of x [M, ...] into n bins by idx [M] (bincount per entry: far faster than np.add.at)."""
    flat = x.reshape(len(idx), -1)
    out = np.stack([np.bincount(idx, flat[:, e], n) for e in range(flat.shape[1])], -1)
    return out.reshape((n,) + x.shape[1:])


def _banded(diag: np.ndarray, off1: np.ndarray, off2: np.ndarray) -> np.ndarray:
    """Lower band storage (scipy's ab[i, j] = A[j + i, j]) of a symmetric block-pentadiagonal matrix with
    6x6 blocks: diag [U, 6, 6], off1 [U-1, 6, 6] = block (u+1, u), off2 [U-2, 6, 6] = block (u+2, u)."""
    u = len(diag)
    ab = np.zeros((BAND + 1, 6 * u))
    r, c = np.meshgrid(np.arange(6), np.arange(6), indexing="ij")
    for blocks, shift in ((diag, 0), (off1, 1), (off2, 2)):
        if not len(blocks):
            continue
        i = 6 * shift + r - c  # [6, 6] band row of each entry
        keep = i >= 0
        cols = 6 * np.arange(len(blocks))[:, None] + c[keep][None]  # [n, e]
        ab[np.broadcast_to(i[keep], cols.shape), cols] = blocks[:, keep]
    return ab


def _normal_equations(p: Problem, s: State):
    """GN normal equations split into the pose block (banded), the point block and their coupling.

    Point-side unknowns are ordered [shape K*3, points J*3, log f]. Returns (A band, B [6U, P], C [P, P],
    g_pose [6U], g_point [P]) with the common factor 2 dropped."""
    n_u, n_k, n_j = len(s.rot), len(s.shape), len(s.points)
    n_p = 3 * (n_k + n_j) + 1
    diag = np.zeros((n_u, 6, 6))
    off1 = np.zeros((max(0, n_u - 1), 6, 6))
    off2 = np.zeros((max(0, n_u - 2), 6, 6))
    g_a = np.zeros((n_u, 6))
    b = np.zeros((n_u, 6, n_p))
    c = np.zeros((n_p, n_p))
    g_c = np.zeros(n_p)

    def terms(rotated, cam, obs, weight, frame):
        # Per-residual blocks for points rotated = R X [.., 3], cam = R X + t, observed at obs [.., 2].
        res, d, fxy = _project(p, s, cam, obs)
        w = (weight * _robust(p, res)[1])[..., None, None]  # [.., 1, 1]
        j_pose = np.concatenate([-d @ skew(rotated), d], -1)  # [.., 2, 6] (rotation increment, translation)
        j_pt = d @ s.rot[frame]  # [.., 2, 3]
        j_f = fxy[..., None]  # [.., 2, 1] d residual / d log f
        jw_pose, jw_pt = w * j_pose, w * j_pt
        return {
            "pp": np.einsum("...ra,...rb->...ab", jw_pose, j_pose),  # [.., 6, 6]
            "pq": np.einsum("...ra,...rb->...ab", jw_pose, j_pt),  # [.., 6, 3]
            "qq": np.einsum("...ra,...rb->...ab", jw_pt, j_pt),  # [.., 3, 3]
            "pf": np.einsum("...ra,...r->...a", jw_pose, fxy),  # [.., 6]
            "qf": np.einsum("...ra,...r->...a", jw_pt, fxy),  # [.., 3]
            "ff": (w * j_f * j_f).sum((-1, -2)),  # [..]
            "gp": np.einsum("...ra,...r->...a", jw_pose, res),  # [.., 6]
            "gq": np.einsum("...ra,...r->...a", jw_pt, res),  # [.., 3]
            "gf": (w[..., 0] * fxy * res).sum(-1),  # [..]
        }

    # Landmarks: every frame sees every shape point, a full [U, K] grid: reduce before scattering.
    rotated = np.einsum("uij,kj->uki", s.rot, s.shape)  # [U, K, 3]
    t = terms(rotated, rotated + s.trans[:, None], p.lm_obs, p.lm_weight[None], np.arange(n_u)[:, None])
    diag += t["pp"].sum(1)
    g_a += t["gp"].sum(1)
    b[:, :, : 3 * n_k] = t["pq"].transpose(0, 2, 1, 3).reshape(n_u, 6, 3 * n_k)
    b[:, :, -1] += t["pf"].sum(1)
    qq = t["qq"].sum(0)  # [K, 3, 3]
    for a in range(3):
        for bb in range(3):
            c[3 * np.arange(n_k) + a, 3 * np.arange(n_k) + bb] += qq[:, a, bb]
    c[: 3 * n_k, -1] += t["qf"].sum(0).ravel()
    g_c[: 3 * n_k] += t["gq"].sum(0).ravel()
    c[-1, -1] += t["ff"].sum()
    g_c[-1] += t["gf"].sum()
    if len(p.tr_frame):
        # Tracks: one observation per (frame, point) pair, scattered; sums over frames with bincount.
        fr, pt = p.tr_frame, p.tr_point
        rotated = np.einsum("mij,mj->mi", s.rot[fr], s.points[pt])  # [M, 3]
        t = terms(rotated, rotated + s.trans[fr], p.tr_obs, p.tr_weight, fr)
        diag += _sum_by(fr, t["pp"], n_u)
        g_a += _sum_by(fr, t["gp"], n_u)
        cols = 3 * (n_k + pt)[:, None] + np.arange(3)  # [M, 3]
        b[fr[:, None, None], np.arange(6)[None, :, None], cols[:, None, :]] = t["pq"]  # (frame, point) unique
        b[:, :, -1] += _sum_by(fr, t["pf"], n_u)
        qq = _sum_by(pt, t["qq"], n_j)  # [J, 3, 3]
        base = 3 * (n_k + np.arange(n_j))
        for a in range(3):
            for bb in range(3):
                c[base + a, base + bb] += qq[:, a, bb]
        c[3 * n_k : -1, -1] += _sum_by(pt, t["qf"], n_j).ravel()
        g_c[3 * n_k : -1] += _sum_by(pt, t["gq"], n_j).ravel()
        c[-1, -1] += t["ff"].sum()
        g_c[-1] += t["gf"].sum()

    if n_u >= 3:
        # Second differences: residual r_i = sum_p coef_p X_{i+p} for rotation matrices and translations;
        # d vec(R_u) / d(increment) = columns vec(skew(e_a) R_u).
        j_rot = np.stack([(skew(np.eye(3)[a]) @ s.rot).reshape(n_u, 9) for a in range(3)], -1)  # [U, 9, 3]
        coef = (1.0, -2.0, 1.0)
        r_rot = (s.rot[2:] - 2 * s.rot[1:-1] + s.rot[:-2]).reshape(-1, 9)  # [U-2, 9]
        r_t = s.trans[2:] - 2 * s.trans[1:-1] + s.trans[:-2]  # [U-2, 3]
        m = p.smooth_mask[:, None, None]
        for pi in range(3):
            jp = j_rot[pi : n_u - 2 + pi]  # [U-2, 9, 3]
            g_a[pi : n_u - 2 + pi, :3] += (
                coef[pi] * p.smooth_rot * p.smooth_mask[:, None] * np.einsum("nra,nr->na", jp, r_rot)
            )
            g_a[pi : n_u - 2 + pi, 3:] += coef[pi] * p.smooth_trans * p.smooth_mask[:, None] * r_t
            for qi in range(pi + 1):
                jq = j_rot[qi : n_u - 2 + qi]
                block = np.zeros((n_u - 2, 6, 6))
                block[:, :3, :3] = p.smooth_rot * np.einsum("nra,nrb->nab", jp, jq)
                block[:, 3:, 3:] = p.smooth_trans * np.eye(3)
                block *= coef[pi] * coef[qi] * m
                target = (diag, off1, off2)[pi - qi]
                target[qi : n_u - 2 + qi] += block  # block (i + pi, i + qi) sits at column i + qi

    k3, j3 = 3 * n_k, 3 * (n_k + n_j)
    c[np.arange(k3), np.arange(k3)] += p.shape_prior
    c[np.arange(k3, j3), np.arange(k3, j3)] += p.point_prior
    g_c[:k3] += p.shape_prior * (s.shape - p.shape0).ravel()
    g_c[k3:j3] += p.point_prior * (s.points - p.points0).ravel()
    c[-1, :-1] = c[:-1, -1]  # the focal column was filled above; mirror it into the row
    return (diag, off1, off2), b.reshape(6 * n_u, n_p), c, g_a.ravel(), g_c


def _reduced_solve(c: np.ndarray, b: np.ndarray, ainv: np.ndarray, g_c: np.ndarray) -> np.ndarray:
    """Solve the Schur complement (C - B^T A^-1 B) dc = -g_c + B^T A^-1 g_a on one thread (torch).

    Multithreaded OpenBLAS (numpy's and scipy's) was 20-50x slower than one thread on the shared 2-core
    machine (a 1000-unknown Cholesky: 1.4 s vs 0.02 s), and only torch offers a thread limit."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        bt = torch.from_numpy(b).T  # [P, 6U]
        ai = torch.from_numpy(ainv)  # [6U, P + 1]
        prod = bt @ ai  # [P, P + 1]
        schur = torch.from_numpy(c) - prod[:, :-1]
        rhs = (prod[:, -1] - torch.from_numpy(g_c))[:, None]
        factor, info = torch.linalg.cholesky_ex(schur)
        if int(info):
            raise np.linalg.LinAlgError("reduced system not positive definite")
        return torch.cholesky_solve(rhs, factor)[:, 0].numpy()
    finally:
        torch.set_num_threads(threads)


def _step(s: State, dx_pose: np.ndarray, dx_point: np.ndarray) -> State:
    n_k = len(s.shape)
    d = dx_pose.reshape(-1, 6)
    return State(
        rot=rodrigues(d[:, :3]) @ s.rot,
        trans=s.trans + d[:, 3:],
        shape=s.shape + dx_point[: 3 * n_k].reshape(-1, 3),
        points=s.points + dx_point[3 * n_k : -1].reshape(-1, 3),
        log_f=s.log_f + float(dx_point[-1]),
    )


def solve(p: Problem, s: State, *, max_iter: int = 30, tol: float = 1e-3) -> tuple[State, dict]:
    """Levenberg-Marquardt from ``s``; returns the refined state and iteration figures."""
    lam = 1e-4
    current = cost(p, s)
    iters = evals = 0
    for iters in range(1, max_iter + 1):  # noqa: B007 - reported below
        (diag, off1, off2), b, c, g_a, g_c = _normal_equations(p, s)
        improved = False
        while lam < 1e8:
            # Marquardt damping: scale-invariant (the unknowns mix radians, cm and log focal).
            da = diag.copy()
            idx = np.arange(6)
            da[:, idx, idx] *= 1 + lam
            cd = c.copy()
            cd[np.diag_indices_from(cd)] *= 1 + lam
            try:
                chol = sla.cholesky_banded(_banded(da, off1, off2), lower=True)
                ainv = sla.cho_solve_banded((chol, True), np.column_stack([b, g_a]))  # [6U, P + 1]
                dc = _reduced_solve(cd, b, ainv, g_c)  # [P]
            except (np.linalg.LinAlgError, ValueError, RuntimeError):
                lam *= 10
                continue
            dp = -ainv[:, -1] - ainv[:, :-1] @ dc
            trial = _step(s, dp, dc)
            new = cost(p, trial)
            evals += 1
            if np.isfinite(new) and new < current:
                improved = True
                lam = max(lam / 3, 1e-9)
                break
            lam *= 4
        if not improved:
            break
        s, previous, current = trial, current, new
        log.debug("LM iteration %d: cost %.6g, lambda %.2g", iters, current, lam)
        if previous - current < tol * previous:
            break
    return s, {"iterations": iters, "cost_evaluations": evals, "final_cost": current}
