"""Per-frame parsing: background / head / neck / torso labels and the soft inner-face portrait mask.

The published method uses a face-parsing network with non-commercial weights. Ours (METHOD.md 1.4)
combines the selfie person mask with the landmark geometry: the face oval and jaw line split the person
into head (above the jaw, including hair and ears) and the rest, a band under the jaw is the neck, the
remainder is torso. Anything that implements ``Parser`` (e.g. a multiclass parsing model) can replace it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np

from gpu_worker.preprocess.landmarker import open_segmenter, person_mask
from shared.settings import Settings

BACKGROUND, HEAD, NECK, TORSO = 0, 1, 2, 3
LABEL_NAMES = {BACKGROUND: "background", HEAD: "head", NECK: "neck", TORSO: "torso"}

# MediaPipe face mesh silhouette, clockwise from the forehead top (10); 234 / 454 are at the ears, 152 the chin.
FACE_OVAL = np.array([
    10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377,
    152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109,
])  # fmt: skip
JAW = FACE_OVAL[8:29]  # 454 ... 152 ... 234: the lower half of the oval
CHIN, FOREHEAD, FACE_LEFT, FACE_RIGHT = 152, 10, 234, 454

PERSON_THRESHOLD = 0.5
SEGMENTER_INPUT = 256  # the selfie segmentation model's native input side (px)
NECK_WIDTH = 0.75  # neck band width as a share of the face width (ear to ear)
NECK_LENGTH = 0.7  # neck band length below the chin as a share of the face height (forehead to chin)


@dataclass
class ParseResult:
    labels: np.ndarray  # [R, R] uint8: 0 background, 1 head, 2 neck, 3 torso
    face_mask: np.ndarray  # [R, R] uint8 0..255 soft inner-face mask
    person: np.ndarray  # [R, R] float32 0..1 soft person probability


class Parser(Protocol):
    """What a frame parser provides; ``parse`` sees the crop RGB [R, R, 3] and its landmarks [478, 3]."""

    name: str

    def parse(self, rgb: np.ndarray, landmarks: np.ndarray) -> ParseResult: ...

    def close(self) -> None: ...


def _jaw_line_y(landmarks: np.ndarray, width: int) -> np.ndarray:
    """For each image column, the y of the jaw line (extended flat beyond the ears). [W]"""
    jaw = landmarks[JAW, :2].astype(np.float64)  # [21, 2]
    order = np.argsort(jaw[:, 0])
    xs, ys = jaw[order, 0], jaw[order, 1]
    xs = np.maximum.accumulate(xs + np.arange(len(xs)) * 1e-6)  # np.interp needs increasing x
    return np.interp(np.arange(width) + 0.5, xs, ys)


def face_mask_from_landmarks(landmarks: np.ndarray, size: int) -> np.ndarray:
    """Soft inner-face mask: the face oval without forehead hair line or ears, a little below the chin,
    then blurred, so a rendered face blends into the original frame without a seam. [R, R] uint8"""
    oval = landmarks[FACE_OVAL, :2].astype(np.float64)  # [36, 2]
    centre = landmarks[[FOREHEAD, CHIN], :2].mean(0)
    height = float(np.linalg.norm(landmarks[CHIN, :2] - landmarks[FOREHEAD, :2]))
    rel = oval - centre
    below = rel[:, 1] > 0
    # Upper half shrinks inward (keeps hair and ears out); lower half grows a little (under the chin).
    scale = np.where(below, 1.06, 0.9)[:, None]
    poly = centre + rel * scale
    mask = np.zeros((size, size), np.uint8)
    cv2.fillPoly(mask, [np.round(poly * 4).astype(np.int32)], 255, lineType=cv2.LINE_AA, shift=2)
    # Erode then blur by about the same amount, so the blurred edge stays inside the face; done at a
    # quarter of the size (it is smooth anyway) to keep it cheap.
    small = cv2.resize(mask, (size // 4, size // 4), interpolation=cv2.INTER_AREA)
    sigma = max(0.5, 0.01 * height)
    k = int(2 * round(3 * sigma) + 1)
    small = cv2.erode(small, np.ones((3, 3), np.uint8), iterations=max(1, round(sigma)))
    small = cv2.GaussianBlur(small, (k, k), sigma)
    return cv2.resize(small, (size, size), interpolation=cv2.INTER_LINEAR)


def labels_from_person(person: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """Split a soft person mask [R, R] into head / neck / torso with the landmark geometry. [R, R] uint8"""
    size = person.shape[0]
    is_person = person >= PERSON_THRESHOLD
    ys = (np.arange(size) + 0.5)[:, None]  # [R, 1]
    xs = (np.arange(size) + 0.5)[None, :]  # [1, R]
    above_jaw = ys < _jaw_line_y(landmarks, size)[None, :]  # [R, R]
    oval = np.zeros((size, size), np.uint8)
    cv2.fillPoly(oval, [np.round(landmarks[FACE_OVAL, :2] * 4).astype(np.int32)], 1, shift=2)
    head = (is_person & above_jaw) | oval.astype(bool)

    face_w = float(np.linalg.norm(landmarks[FACE_RIGHT, :2] - landmarks[FACE_LEFT, :2]))
    face_h = float(np.linalg.norm(landmarks[CHIN, :2] - landmarks[FOREHEAD, :2]))
    chin_x, chin_y = landmarks[CHIN, :2]
    band = (np.abs(xs - chin_x) < 0.5 * NECK_WIDTH * face_w) & (ys < chin_y + NECK_LENGTH * face_h)
    neck = is_person & ~head & band

    labels = np.zeros((size, size), np.uint8)
    labels[is_person] = TORSO
    labels[neck] = NECK
    labels[head] = HEAD
    return labels


class SelfieLandmarkParser:
    """The default parser: MediaPipe selfie segmentation + landmark geometry. Use as a context manager."""

    name = "selfie+landmarks"

    def __init__(self, settings: Settings) -> None:
        self._ctx = open_segmenter(settings)
        self._segmenter = self._ctx.__enter__()

    def parse(self, rgb: np.ndarray, landmarks: np.ndarray) -> ParseResult:
        size = rgb.shape[0]
        if size > SEGMENTER_INPUT:
            # The model sees 256 px anyway: hand it 256 px and upsample its soft mask ourselves, which
            # skips MediaPipe's own resize in and out (about 1 ms per 512 px frame).
            small = cv2.resize(rgb, (SEGMENTER_INPUT,) * 2, interpolation=cv2.INTER_AREA)
            person = cv2.resize(person_mask(self._segmenter, small), (size, size))  # [R, R]
        else:
            person = person_mask(self._segmenter, rgb)  # [R, R]
        return ParseResult(
            labels_from_person(person, landmarks), face_mask_from_landmarks(landmarks, rgb.shape[0]), person
        )

    def close(self) -> None:
        self._ctx.__exit__(None, None, None)

    def __enter__(self) -> SelfieLandmarkParser:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
