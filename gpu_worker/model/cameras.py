"""Camera rays and pose interpolation: what training, evaluation and rendering all need of a camera."""

from __future__ import annotations

import numpy as np
import torch


def pixel_rays(
    pose: torch.Tensor, intrinsics: torch.Tensor, px: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rays through pixel centres. pose [4, 4] c2w (OpenGL), intrinsics [4], px [K, 2] (x, y) -> o, d [K, 3]."""
    fx, fy, cx, cy = intrinsics
    x = (px[:, 0] + 0.5 - cx) / fx
    y = -(px[:, 1] + 0.5 - cy) / fy  # image y down, camera y up
    d_cam = torch.stack([x, y, -torch.ones_like(x)], -1)  # camera looks down -z
    d = d_cam @ pose[:3, :3].T
    d = d / d.norm(dim=-1, keepdim=True)
    o = pose[:3, 3].expand_as(d)
    return o.contiguous(), d.contiguous()


def interpolate_poses(poses: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Camera-to-world poses at fractional frame times: poses [N, 4, 4], t [B] in 0..N-1 -> [B, 4, 4].

    The output's frames may fall between the model's (a 30 fps source over a 25 fps dataset): rotations
    are interpolated along the shortest arc between the two neighbouring frames, translations linearly;
    an integer t returns that frame's pose exactly."""
    from scipy.spatial.transform import Rotation

    t = np.clip(np.asarray(t, np.float64), 0, len(poses) - 1)
    i0 = np.floor(t).astype(np.int64)
    i1 = np.minimum(i0 + 1, len(poses) - 1)
    w = (t - i0)[:, None]  # [B, 1]
    p0, p1 = np.asarray(poses[i0], np.float64), np.asarray(poses[i1], np.float64)  # [B, 4, 4]
    r0 = Rotation.from_matrix(p0[:, :3, :3])
    step = (r0.inv() * Rotation.from_matrix(p1[:, :3, :3])).as_rotvec()  # [B, 3]
    out = p0.copy()
    out[:, :3, :3] = (r0 * Rotation.from_rotvec(step * w)).as_matrix()
    out[:, :3, 3] = (1 - w) * p0[:, :3, 3] + w * p1[:, :3, 3]
    exact = w[:, 0] == 0  # no round trip through rotation vectors for the model's own frames
    out[exact] = p0[exact]
    return out.astype(np.float32)
