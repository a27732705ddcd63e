"""Drawing what a warp cannot make: closing eyelids and the dark inside of an opening mouth."""

from __future__ import annotations

import numpy as np

# MediaPipe eye contours, outer corner to inner corner (upper lid, lower lid), one pair per eye.
EYES = (
    ([33, 246, 161, 160, 159, 158, 157, 173, 133], [33, 7, 163, 144, 145, 153, 154, 155, 133]),
    ([263, 466, 388, 387, 386, 385, 384, 398, 362], [263, 249, 390, 373, 374, 380, 381, 382, 362]),
)
MOUTH_INSIDE_RGB = (52, 18, 22)  # the dark red-brown of an open mouth's shadowed interior
LASH_RGB = (70, 48, 40)
_SUB = 4  # fixed-point bits for sub-pixel polygon drawing


def _mask(shape: tuple[int, int], polygon: np.ndarray) -> np.ndarray:
    """Anti-aliased coverage [H, W] float32 in 0..1 of a float polygon [K, 2] (pixel-corner origin)."""
    import cv2

    mask = np.zeros(shape, np.uint8)
    pts = np.round((polygon - 0.5) * (1 << _SUB)).astype(np.int32).reshape(-1, 1, 2)
    cv2.fillPoly(mask, [pts], 255, lineType=cv2.LINE_AA, shift=_SUB)
    return mask.astype(np.float32) / 255.0


def _blend(image: np.ndarray, alpha: np.ndarray, colour: np.ndarray) -> None:
    """In place: image = alpha * colour + (1 - alpha) * image; colour is [3] or [H, W, 3]."""
    out = image.astype(np.float32) * (1.0 - alpha[..., None]) + alpha[..., None] * colour
    image[...] = np.clip(out + 0.5, 0, 255).astype(np.uint8)


class EyelidPainter:
    """Lowers the upper lids of the rest image by a closure fraction (0 open, 1 shut)."""

    def __init__(self, rest: np.ndarray, landmarks: np.ndarray) -> None:
        self._eyes = [(landmarks[up, :2], landmarks[lo, :2]) for up, lo in EYES]
        self._skin = [self._lid_colour(rest, up) for up, _ in self._eyes]
        self._lash_px = max(1, int(round(rest.shape[0] / 400)))

    @staticmethod
    def _lid_colour(rest: np.ndarray, upper: np.ndarray) -> np.ndarray:
        """Median colour of the skin just above the lid (between lid and brow)."""
        width = float(upper[:, 0].max() - upper[:, 0].min())
        band = np.concatenate([upper - [0, 0.12 * width], (upper - [0, 0.3 * width])[::-1]])
        mask = _mask(rest.shape[:2], band) > 0.5
        pixels = rest[mask].reshape(-1, 3).astype(np.float32)
        # The brighter part of the band: the lid crease and lashes only darken it.
        luma = pixels @ np.array([0.299, 0.587, 0.114], np.float32)
        return np.median(pixels[luma >= np.median(luma)], axis=0)

    def paint(self, image: np.ndarray, closure: float) -> None:
        import cv2

        if closure <= 0.02:
            return
        for (upper, lower), skin in zip(self._eyes, self._skin, strict=True):
            edge = upper + closure * (lower - upper)  # where the lid margin has come down to
            # Start a hair above the lid line so no lash of the open eye peeks out.
            lid = np.concatenate([upper - [0, 0.6], edge[::-1]])
            _blend(image, _mask(image.shape[:2], lid), skin)
            lash = np.round((edge - 0.5) * (1 << _SUB)).astype(np.int32).reshape(-1, 1, 2)
            cv2.polylines(image, [lash], False, LASH_RGB, self._lash_px, cv2.LINE_AA, shift=_SUB)


def paint_mouth_gap(image: np.ndarray, polygon: np.ndarray) -> None:
    """Fill the opened gap between the lips with a dark interior, darker towards its middle.

    ``polygon`` [2K, 2]: the K points of the upper edge left to right, then the K matching points of
    the lower edge right to left (as ``HeadRig.mouth_gap_polygon`` returns it).
    """
    import cv2

    h, w = image.shape[:2]
    x0, y0 = np.floor(polygon.min(axis=0)).astype(int) - 2
    x1, y1 = np.ceil(polygon.max(axis=0)).astype(int) + 3
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if x1 - x0 < 1 or y1 - y0 < 1:
        return
    local = polygon - [x0, y0]
    # A gap under ~2 px is not a clean dark region yet: fade it in rather than drawing a hard line.
    k = len(polygon) // 2
    height = float(np.max(np.linalg.norm(polygon[k:][::-1] - polygon[:k], axis=1)))
    alpha = _mask((y1 - y0, x1 - x0), local) * min(1.0, height / 2.0)
    if alpha.max() <= 0.0:
        return
    # Deeper inside the mouth is darker: shade by the distance to the gap's edge.
    depth = cv2.distanceTransform((alpha > 0.5).astype(np.uint8), cv2.DIST_L2, 3)
    shade = 1.0 - 0.45 * np.clip(depth / max(1.0, float(depth.max())), 0.0, 1.0)
    colour = np.asarray(MOUTH_INSIDE_RGB, np.float32)[None, None, :] * shade[..., None]
    _blend(image[y0:y1, x0:x1], alpha, colour)
