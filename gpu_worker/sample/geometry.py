"""Rotation conventions of the sample subject's truth (one place, so truth.json and its readers agree).

Camera axes are OpenCV's: x to the image right, y down, z forward (away from the camera), right-handed.
A head pose is the rotation of the head *relative to its rest pose in the photo*, about a pivot near
the top of the neck, expressed in those camera axes:

    R = Rz(roll) @ Ry(yaw) @ Rx(pitch)      (extrinsic x, then y, then z;
                                              scipy: Rotation.from_euler("xyz", [pitch, yaw, roll]))

so, as seen in the image: +pitch tips the nose down (a nod, looking down), +yaw turns the nose
towards the image left (the person's own right), +roll turns the head clockwise.
"""

from __future__ import annotations

import numpy as np

# OpenCV camera axes -> OpenGL/MediaPipe axes (y up, z towards the viewer): flip y and z.
CV_TO_GL = np.diag([1.0, -1.0, -1.0])


def euler_to_matrix(pitch_deg: float, yaw_deg: float, roll_deg: float) -> np.ndarray:
    """Rotation matrix [3, 3] of the convention above."""
    a, b, c = np.radians([pitch_deg, yaw_deg, roll_deg])
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


def matrix_to_euler(r: np.ndarray) -> tuple[float, float, float]:
    """(pitch, yaw, roll) in degrees of a rotation [3, 3] (inverse of ``euler_to_matrix`` for |yaw| < 90)."""
    yaw = np.arcsin(np.clip(-r[2, 0], -1.0, 1.0))
    pitch = np.arctan2(r[2, 1], r[2, 2])
    roll = np.arctan2(r[1, 0], r[0, 0])
    p, y, ro = np.degrees([pitch, yaw, roll])
    return float(p), float(y), float(ro)


def cv_to_gl_rotation(r_cv: np.ndarray) -> np.ndarray:
    """The same physical rotation written in OpenGL/MediaPipe camera axes (y up, z towards the viewer).

    MediaPipe's facial transformation matrices M_t then satisfy, up to its measurement noise,
    ``M_t[:3, :3] @ M_rest[:3, :3].T ~= cv_to_gl_rotation(R_t)``.
    """
    return CV_TO_GL @ r_cv @ CV_TO_GL
