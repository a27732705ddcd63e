"""Background plate and the training targets (METHOD.md 1.5 and 1.6).

The plate is accumulated while frames stream by: every pixel keeps the colour of the frame in which it
was farthest from the person (least likely to hold a soft edge or a shadow); pixels the person always
covered are inpainted at the end. ``gt`` puts each frame's person over that plate, so the NeRF sees one
static background; ``torso`` is the neck and torso without the head, the neck extended upward under the
chin and filled toward its mean colour, so a moving rendered head never uncovers a dark gap.
"""

from __future__ import annotations

import cv2
import numpy as np

from gpu_worker.preprocess.parsing import CHIN, FOREHEAD, HEAD, NECK, TORSO

PERSON_DILATE_PX = 3  # keep soft person edges (hair strands, motion blur) out of the plate
MIN_CLEAR_PX = 2.0  # a pixel seen this close to the person counts as never seen: inpainted instead
NECK_EXTEND = 0.35  # neck extension above the jaw, as a share of the face height
NECK_FADE = 0.25  # top share of the visible neck that blends toward the mean neck colour


class PlateAccumulator:
    """Streaming "farthest from the person" plate. Memory: one [R, R] distance and one [R, R, 3] image."""

    def __init__(self, size: int) -> None:
        self.best = np.zeros((size, size), np.float32)  # [R, R] best distance to the person so far
        self.plate = np.zeros((size, size, 3), np.uint8)  # [R, R, 3]

    def update(self, rgb: np.ndarray, labels: np.ndarray) -> None:
        person = (labels != 0).astype(np.uint8)
        person = cv2.dilate(person, np.ones((2 * PERSON_DILATE_PX + 1,) * 2, np.uint8))
        dist = cv2.distanceTransform(1 - person, cv2.DIST_L2, 3)  # [R, R] px to the nearest person pixel
        better = dist > self.best
        self.best[better] = dist[better]
        self.plate[better] = rgb[better]

    def result(self) -> tuple[np.ndarray, float]:
        """(plate [R, R, 3] RGB, share of pixels inpainted)."""
        unseen = (self.best < MIN_CLEAR_PX).astype(np.uint8)
        share = float(unseen.mean())
        if share == 0:
            return self.plate.copy(), share
        if share == 1:
            # The person filled every frame entirely: no background to learn; a flat mid-grey plate.
            return np.full_like(self.plate, 127), share
        radius = max(3, self.plate.shape[0] // 64)
        bgr = cv2.inpaint(cv2.cvtColor(self.plate, cv2.COLOR_RGB2BGR), unseen, radius, cv2.INPAINT_TELEA)
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), share


def composite_gt(rgb: np.ndarray, person: np.ndarray, plate: np.ndarray) -> np.ndarray:
    """The frame's person over the plate, blended with the soft person mask. [R, R, 3] uint8"""
    alpha = np.clip(person, 0.0, 1.0)[..., None]  # [R, R, 1]
    out = alpha * rgb.astype(np.float32) + (1.0 - alpha) * plate.astype(np.float32)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def torso_target(rgb: np.ndarray, labels: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """RGBA neck + torso without the head; the neck is extended upward into the head region (under the
    jaw) and its upper part filled toward the mean neck colour. [R, R, 4] uint8"""
    size = labels.shape[0]
    neck = labels == NECK
    body = neck | (labels == TORSO)
    out = np.zeros((size, size, 4), np.uint8)
    out[..., :3][body] = rgb[body]
    out[..., 3][body] = 255
    if not neck.any():
        return out
    mean = rgb[neck].reshape(-1, 3).mean(0)  # [3]
    face_h = float(np.linalg.norm(landmarks[CHIN, :2] - landmarks[FOREHEAD, :2]))
    rows = np.flatnonzero(neck.any(1))
    top = rows[0]
    neck_h = max(1, rows[-1] - top + 1)
    # Columns the neck occupies near its top: the extension goes straight up from there.
    top_band = neck[top : top + max(2, neck_h // 5)].any(0)  # [R]
    ext_top = int(max(0, top - NECK_EXTEND * face_h))
    ys = np.arange(size)[:, None]
    extension = (ys >= ext_top) & (ys < top) & top_band[None, :] & (labels == HEAD)
    # Visible neck: blend its top toward the mean colour (fades out downward), so the joint to the
    # extension carries no shadow line.
    fade_rows = max(1, int(NECK_FADE * neck_h))
    w = np.clip(1.0 - (ys - top) / fade_rows, 0.0, 1.0)  # [R, 1]
    w = np.broadcast_to(w, (size, size))
    blend = neck & (w > 0)
    px = rgb[blend].astype(np.float32)
    out[..., :3][blend] = np.clip(
        w[blend][:, None] * mean + (1 - w[blend][:, None]) * px + 0.5, 0, 255
    ).astype(np.uint8)
    out[..., :3][extension] = np.clip(mean + 0.5, 0, 255).astype(np.uint8)
    out[..., 3][extension] = 255
    return out
