"""A 3D head rig built from one photo: rigid head motion plus a jaw, rendered by warping the photo.

The photo's pixels get depth: MediaPipe's landmark depth inside the face, an ellipsoid fitted to it
for hair and ears. Each head pixel is lifted to 3D through a pinhole camera, the lower face drops with
the jaw, the head turns rigidly about a pivot near the top of the neck, and the result is projected
back. That gives a forward displacement field over the photo; it is inverted by fixed-point iteration
and the photo is resampled with one ``cv2.remap``. A weight falls smoothly from 1 on the head to 0 on
the torso and background, so the body stays put and the neck stretches a little, as in a real video.

All coordinates are output-frame pixels with the origin at the top-left *corner* (pixel j's centre is
at j + 0.5); depths are in the same pixel scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gpu_worker.sample.errors import SampleError
from gpu_worker.sample.portrait import CHIN, FOREHEAD, Portrait

# Focal length in frame widths: about a 1 m portrait distance for a face a third of the frame wide.
FOCAL_FRAME_WIDTHS = 2.0
# Inner lower lip, mouth corner to mouth corner (image left to right).
LOWER_INNER_LIP = [78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308]
UPPER_INNER_LIP = [78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308]
# Jaw drop at opening 1, in inner-mouth half widths (a wide-open vowel, not a yawn).
JAW_DROP = 0.6
FIXED_POINT_ITERATIONS = 4
# Beyond the face edge the head surface turns away from the camera: depth gained per pixel outwards.
SIDE_RECESSION = 1.2


@dataclass(frozen=True)
class Camera:
    """Pinhole camera of the frame (square pixels, principal point at the frame centre)."""

    f: float
    cx: float
    cy: float


def smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


class HeadRig:
    """Everything about the rest frame that does not change from frame to frame."""

    def __init__(self, portrait: Portrait) -> None:
        n = portrait.size
        lm = portrait.landmarks  # [478, 3]
        fw = portrait.face_width
        self.size = n
        self.landmarks = lm
        self.camera = Camera(f=FOCAL_FRAME_WIDTHS * n, cx=n / 2.0, cy=n / 2.0)
        self._fw = fw

        # Head outline: an ellipse from the top of the hair to the chin, a little wider than the face.
        face_cx = float(np.mean(lm[:, 0]))
        top = lm[FOREHEAD, 1] - 0.62 * fw
        bottom = lm[CHIN, 1]
        self._ellipse = (face_cx, 0.5 * (top + bottom), 0.85 * fw, 0.5 * (bottom - top))  # cx, cy, a, b

        # Mouth geometry for the jaw weight.
        lower = lm[LOWER_INNER_LIP, :2]  # [11, 2], left to right
        order = np.argsort(lower[:, 0])
        self._lip_x, self._lip_y = lower[order, 0], lower[order, 1]
        self._mouth_cx = 0.5 * (self._lip_x[0] + self._lip_x[-1])
        self._mouth_hw = 0.5 * (self._lip_x[-1] - self._lip_x[0])
        self.jaw_drop_px = float(JAW_DROP * self._mouth_hw)

        # The region where anything can move: the head weight's support, with a margin.
        ex, ey, ea, eb = self._ellipse
        x0 = int(np.floor(max(0.0, ex - ea - 0.5 * fw)))
        x1 = int(np.ceil(min(n, ex + ea + 0.5 * fw)))
        y0 = int(np.floor(max(0.0, ey - eb - 0.4 * fw)))
        y1 = int(np.ceil(min(n, bottom + 1.0 * fw)))
        self.region = (x0, y0, x1, y1)
        u, v = np.meshgrid(np.arange(x0, x1) + 0.5, np.arange(y0, y1) + 0.5)  # [h, w] pixel centres
        self._u, self._v = u.astype(np.float32), v.astype(np.float32)

        self._depth = self._depth_map(u, v)  # [h, w]
        self._w = self.head_weight(u, v).astype(np.float32)  # [h, w]
        self._m = self.jaw_weight(u, v).astype(np.float32)  # [h, w]
        self._rest = self._lift(self._u, self._v, self._depth)  # 3 x [h, w] camera coordinates

        # Pivot near the top of the neck: below the mouth, half a face width behind the face surface.
        pz = float(np.median(lm[:, 2])) + 0.55 * fw
        pivot_uv = np.array([face_cx, lm[CHIN, 1] - 0.2 * fw])
        self.pivot = np.array(self._lift(pivot_uv[0], pivot_uv[1], pz), dtype=np.float64)  # [3]

    # ---- static fields ----------------------------------------------------------------------------
    def _depth_map(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Relative depth [h, w]: the landmarks' own depth inside the face, curving away outside it.

        Inside the landmark hull the depth is interpolated from the landmarks (so the face turns with
        MediaPipe's own 3D shape, cheek contours included); outside, it continues from the nearest face
        edge and recedes with distance (hair, ears, neck are further back), capped at the back of the head.
        """
        import cv2
        from scipy.interpolate import LinearNDInterpolator
        from scipy.ndimage import distance_transform_edt

        lm, fw = self.landmarks, self._fw
        z_face = LinearNDInterpolator(lm[:, :2], lm[:, 2])(u, v)  # NaN outside the landmark hull
        inside = np.isfinite(z_face)
        if not inside.any():
            raise SampleError("the face landmarks lie outside the head region")
        dist, (iy, ix) = distance_transform_edt(~inside, return_indices=True)
        z_edge = z_face[iy, ix]  # depth of the nearest face pixel
        z_back = float(lm[:, 2].max()) + 0.4 * fw
        z = np.where(inside, z_face, np.minimum(z_edge + SIDE_RECESSION * dist, z_back))
        return cv2.GaussianBlur(z.astype(np.float32), (0, 0), max(0.5, 0.015 * fw))

    def head_weight(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """1 on the head, falling smoothly to 0 on torso and background (slower below the chin)."""
        ex, ey, ea, eb = self._ellipse
        fw = self._fw
        r = np.sqrt(((x - ex) / ea) ** 2 + ((y - ey) / eb) ** 2)
        outside = (r - 1.0) * min(ea, eb)
        band = 0.22 * fw + 0.4 * fw * smoothstep(ey, ey + eb, y)
        return 1.0 - smoothstep(0.0, 1.0, outside / band)

    def jaw_weight(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """How far each point follows the jaw: 0 above the lower lip's inner edge, up to 1 on the chin.

        Inside the mouth the weight jumps at the lip edge (the mouth opens there, the gap is painted
        afterwards); beyond the corners it grows smoothly so the cheeks stretch rather than tear.
        """
        fw, hw = self._fw, self._mouth_hw
        dx = x - self._mouth_cx
        below = y - np.interp(x, self._lip_x, self._lip_y)
        lip_profile = np.sqrt(np.clip(1.0 - (dx / hw) ** 2, 0.0, 1.0))  # lens-shaped opening
        chin = 1.0 - smoothstep(0.2 * fw, 0.6 * fw, np.abs(dx))
        s = smoothstep(0.0, 1.2 * hw, below)
        m = np.where(below >= 0.0, lip_profile * (1.0 - s) + chin * s, 0.0)
        chin_y = self.landmarks[CHIN, 1]
        return m * (1.0 - smoothstep(chin_y, chin_y + 0.5 * fw, y))

    def _lift(self, u, v, z):
        """Pixel + relative depth -> camera coordinates; the rest face sits at depth f (1 unit = 1 px)."""
        cam = self.camera
        zc = cam.f + z
        return (u - cam.cx) * zc / cam.f, (v - cam.cy) * zc / cam.f, zc

    # ---- per frame ------------------------------------------------------------------------------
    def _move(self, x, y, z, jaw, rotation: np.ndarray, translation: np.ndarray, opening: float):
        """Jaw, then rigid motion about the pivot, then projection: returns image (u, v)."""
        # Python floats keep float32 grids in float32 (NumPy scalars of float64 would promote them).
        cam, p = self.camera, [float(c) for c in self.pivot]
        r = np.asarray(rotation, dtype=np.float64).tolist()
        translation = [float(c) for c in translation]
        px, py, pz = x - p[0], y + (self.jaw_drop_px * opening) * jaw - p[1], z - p[2]
        x2 = r[0][0] * px + r[0][1] * py + r[0][2] * pz + (p[0] + translation[0])
        y2 = r[1][0] * px + r[1][1] * py + r[1][2] * pz + (p[1] + translation[1])
        z2 = r[2][0] * px + r[2][1] * py + r[2][2] * pz + (p[2] + translation[2])
        return cam.cx + cam.f * x2 / z2, cam.cy + cam.f * y2 / z2

    def move_points(
        self,
        uv: np.ndarray,
        rotation: np.ndarray,
        translation: np.ndarray,
        opening: float,
        *,
        jaw: bool = True,
    ) -> np.ndarray:
        """Where rest-frame points [K, 2] land in the frame, [K, 2] (the same mapping the warp uses)."""
        import cv2

        x0, y0, _, _ = self.region
        # Depth as the warp sees it (sampled from the smoothed map), so painted shapes line up.
        maps = (uv - np.array([x0 + 0.5, y0 + 0.5])).astype(np.float32).reshape(-1, 1, 2)
        z = cv2.remap(self._depth, maps, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)[:, 0]
        u, v = uv[:, 0], uv[:, 1]
        m = self.jaw_weight(u, v) if jaw else np.zeros(len(uv))
        w = self.head_weight(u, v)
        mu, mv = self._move(*self._lift(u, v, z.astype(np.float64)), m, rotation, translation, opening)
        return np.stack([u + w * (mu - u), v + w * (mv - v)], axis=1)

    def source_map(self, rotation: np.ndarray, translation: np.ndarray, opening: float) -> np.ndarray:
        """For every frame pixel, where to sample the rest image: [N, N, 2] float32 for ``cv2.remap``."""
        import cv2

        x0, y0, x1, y1 = self.region
        mu, mv = self._move(*self._rest, self._m, rotation, translation, opening)
        disp = np.stack([self._w * (mu - self._u), self._w * (mv - self._v)], axis=-1).astype(
            np.float32
        )  # [h, w, 2]
        # Invert q = s + d(s) by s <- q - d(s); converges where the field's gradient is below 1,
        # i.e. everywhere except inside the opening mouth, which is painted over.
        src = np.stack([self._u, self._v], axis=-1) - disp  # [h, w, 2]
        for _ in range(FIXED_POINT_ITERATIONS):
            at = src - np.array([x0 + 0.5, y0 + 0.5], dtype=np.float32)
            d = cv2.remap(disp, at, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
            src = np.stack([self._u, self._v], axis=-1) - d
        full = self.identity_map()
        full[y0:y1, x0:x1] = src - 0.5  # remap indexes pixel centres at integers
        return full

    def identity_map(self) -> np.ndarray:
        n = self.size
        gx, gy = np.meshgrid(np.arange(n, dtype=np.float32), np.arange(n, dtype=np.float32))
        return np.stack([gx, gy], axis=-1)  # [N, N, 2]

    def mouth_gap_polygon(self, rotation: np.ndarray, translation: np.ndarray, opening: float) -> np.ndarray:
        """The opened gap in the frame, [22, 2]: lower-lip edge left behind (rigid) and dropped (jaw)."""
        lip = self.landmarks[LOWER_INNER_LIP, :2]
        upper = self.move_points(lip, rotation, translation, opening, jaw=False)
        lower = self.move_points(lip, rotation, translation, opening, jaw=True)
        return np.concatenate([upper, lower[::-1]], axis=0)
