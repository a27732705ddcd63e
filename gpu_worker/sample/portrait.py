"""The rest portrait: scikit-image's astronaut photo, cropped around the face, with its 478 landmarks.

The landmarks (with MediaPipe's relative depth) are measured once on the full photo and carried into
the cropped frame, so every later step works in output-frame pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from gpu_worker.sample.errors import SampleError
from shared.settings import Settings

# MediaPipe face-mesh indices used to size and place things.
FACE_LEFT, FACE_RIGHT = 234, 454  # cheek contour at the ears (image left / right)
FOREHEAD, CHIN = 10, 152

# Side of the square crop, in face widths: keeps hair, ears and shoulders in view with the face at
# roughly a third of the frame, like a typical talking-head recording.
CROP_FACE_WIDTHS = 3.3
# Fraction of the crop above the face centre (the hair needs more room than the chin).
CROP_ABOVE = 0.42


@dataclass(frozen=True)
class Portrait:
    """The rest frame every animated frame is warped from."""

    image: np.ndarray  # [N, N, 3] uint8 RGB
    landmarks: np.ndarray  # [478, 3] float64: x, y in frame pixels (origin at the top-left corner), z in
    #                        the same pixel scale, relative to the face centre, negative towards the camera
    crop: tuple[int, int, int]  # x0, y0, side of the square cut from the photo
    size: int  # N

    @property
    def face_width(self) -> float:
        return float(self.landmarks[FACE_RIGHT, 0] - self.landmarks[FACE_LEFT, 0])


def astronaut_photo() -> np.ndarray:
    """The photo that ships with scikit-image (public domain, NASA): [512, 512, 3] uint8 RGB."""
    import skimage.data

    return np.ascontiguousarray(skimage.data.astronaut())


@lru_cache(maxsize=4)
def _photo_landmarks(model_file: str) -> np.ndarray:
    """Landmarks of the full photo, [478, 3] in photo pixels (cached: the photo never changes)."""
    from gpu_worker.preprocess.landmarker import detect_faces, open_face_landmarker

    photo = astronaut_photo()
    with open_face_landmarker(None, video=False, model_file=Path(model_file)) as landmarker:
        faces = detect_faces(landmarker, photo, None)
    if not faces:
        raise SampleError("the face landmarker found no face on the sample photo")
    # x, y in photo pixels; z in the same pixel scale (MediaPipe's z is normalised "roughly like x")
    return faces[0].landmarks.astype(np.float64)


def load_portrait(size: int, settings: Settings | None = None) -> Portrait:
    """Crop the photo around the face, scale it to ``size`` x ``size`` and carry the landmarks along."""
    import cv2

    from shared.model_files import model_path

    photo = astronaut_photo()
    lm = _photo_landmarks(str(model_path("face_landmarker", settings)))  # [478, 3]
    fw = lm[FACE_RIGHT, 0] - lm[FACE_LEFT, 0]
    cx = 0.5 * (lm[FACE_LEFT, 0] + lm[FACE_RIGHT, 0])
    cy = 0.5 * (lm[FOREHEAD, 1] + lm[CHIN, 1])
    side = int(round(min(CROP_FACE_WIDTHS * fw, *photo.shape[:2])))
    x0 = int(np.clip(round(cx - side / 2), 0, photo.shape[1] - side))
    y0 = int(np.clip(round(cy - CROP_ABOVE * side), 0, photo.shape[0] - side))
    cut = photo[y0 : y0 + side, x0 : x0 + side]
    interp = cv2.INTER_AREA if size < side else cv2.INTER_CUBIC
    image = cv2.resize(cut, (size, size), interpolation=interp)
    scale = size / side
    landmarks = (lm - np.array([x0, y0, 0.0])) * scale
    return Portrait(image=image, landmarks=landmarks, crop=(x0, y0, side), size=size)


def photo_source() -> str:
    return "skimage.data.astronaut (NASA, public domain)"


__all__ = ["Portrait", "astronaut_photo", "load_portrait", "photo_source"]
