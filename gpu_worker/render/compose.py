"""Portrait-Sync and paste-back: the rendered face blended into real pixels (METHOD.md 2, 4).

``portrait``: output = M * render + (1 - M) * the driving frame's real crop, M its soft inner-face mask,
so hair, ears, neck and background are real pixels. ``fullframe``: the same blend done directly in the
source frame: the render and the mask are warped through the stored crop transform into the source,
and only the pixels under the mask change; everything else is the source's own. The mask is feathered
to zero at the crop's border, so no box edge can ever show.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from gpu_worker.preprocess.crop import CropBox

EDGE_FEATHER = 0.06  # share of the crop side over which the mask fades to 0 at the crop's border


def edge_feather(res: int, fraction: float = EDGE_FEATHER) -> np.ndarray:
    """[res, res] float32: 0 on the crop's border, rising linearly to 1 over ``fraction`` of its side."""
    ramp = max(1.0, fraction * res)
    d = np.minimum(np.arange(res), np.arange(res)[::-1]).astype(np.float32)  # px from the nearest edge
    edge = np.clip(d / ramp, 0, 1)
    return np.minimum(edge[:, None], edge[None, :])


def to_uint8(img: np.ndarray) -> np.ndarray:
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def resize(img: np.ndarray, size: int) -> np.ndarray:
    """Square image to ``size`` px (area when shrinking, linear when enlarging)."""
    if img.shape[0] == size:
        return img
    interp = cv2.INTER_AREA if img.shape[0] > size else cv2.INTER_LINEAR
    return cv2.resize(img, (size, size), interpolation=interp)


def blend_portrait(render: np.ndarray, real: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Portrait-Sync at the real crop's size R: render [r, r, 3] float 0..1, real [R, R, 3] uint8, mask
    [R, R] float 0..1 -> [R, R, 3] uint8."""
    r = resize(render, real.shape[0])
    m = mask[..., None]
    return to_uint8(m * r + (1 - m) * (real.astype(np.float32) / 255))


@dataclass
class PasteBack:
    """Blends renders into full-resolution source frames through the crop transform.

    ``crop``: the dataset's crop (source px <-> crop px at its resolution); ``render_res``: the model's
    resolution; ``out_size``: the output (width, height), the source's size made even (one row or column
    dropped from an odd size, as normalization does)."""

    crop: CropBox
    render_res: int
    out_size: tuple[int, int]

    def __post_init__(self) -> None:
        c = self.crop
        w, h = self.out_size
        # the crop square in output pixels, clipped to the frame: the only region a paste can touch
        self.x0, self.y0 = max(0, c.x0), max(0, c.y0)
        self.x1, self.y1 = min(w, c.x0 + c.size), min(h, c.y0 + c.size)
        if self.x1 <= self.x0 or self.y1 <= self.y0:
            raise ValueError("the crop lies outside the source frame")
        box = np.array([[1, 0, -self.x0], [0, 1, -self.y0], [0, 0, 1]], np.float64)
        to_src = c.matrix_crop_to_source()  # crop px at c.resolution -> source px
        # a pixel centre x of a render at r px sits at (x + 0.5) * R / r - 0.5 in the crop at R px
        s = c.resolution / self.render_res
        scale = np.array([[s, 0, 0.5 * s - 0.5], [0, s, 0.5 * s - 0.5], [0, 0, 1]], np.float64)
        self.render_to_box = (box @ to_src @ scale)[:2]  # [2, 3]
        self.mask_to_box = (box @ to_src)[:2]
        self.box_to_crop = np.linalg.inv(box @ to_src)[:2]  # output box px -> crop px (for QC)
        self.feather = edge_feather(c.resolution)

    @property
    def box_size(self) -> tuple[int, int]:
        return self.x1 - self.x0, self.y1 - self.y0

    def paste(self, render: np.ndarray, mask: np.ndarray, source: np.ndarray) -> np.ndarray:
        """render [r, r, 3] float 0..1, mask [R, R] float 0..1 (crop resolution), source [H, W, 3] uint8
        -> the output frame [h, w, 3] uint8 (the source outside the mask, unchanged)."""
        w, h = self.out_size
        out = np.array(source[:h, :w], copy=True)  # the source may be one row/column larger (odd)
        bw, bh = self.box_size
        flags = cv2.INTER_LINEAR
        m = cv2.warpAffine(mask * self.feather, self.mask_to_box, (bw, bh), flags=flags)[..., None]
        r = cv2.warpAffine(render, self.render_to_box, (bw, bh), flags=flags, borderMode=cv2.BORDER_REPLICATE)
        region = out[self.y0 : self.y1, self.x0 : self.x1]
        region[:] = to_uint8(m * r + (1 - m) * (region.astype(np.float32) / 255))
        return out

    def face_crop(self, frame: np.ndarray, size: int) -> np.ndarray:
        """The crop square of an output frame [h, w, 3] as a [size, size, 3] image (for the QC landmarker)."""
        bw, bh = self.box_size
        region = frame[self.y0 : self.y1, self.x0 : self.x1]
        to_crop = self.box_to_crop * (size / self.crop.resolution)
        to_crop[:, 2] += 0.5 * (size / self.crop.resolution) - 0.5
        return cv2.warpAffine(
            region, to_crop, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
        )
