"""MediaPipe Tasks models (FaceLandmarker, selfie ImageSegmenter) behind small context managers.

The Tasks objects hold native graphs: they are always closed explicitly (their ``__del__`` at interpreter
exit prints noise otherwise), and created through the model manager so the file is checksum-verified.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared.settings import Settings

N_LANDMARKS = 478
N_BLENDSHAPES = 52


@dataclass
class FaceResult:
    """One detected face in one image, in that image's pixels (continuous: 0 is the left edge)."""

    landmarks: np.ndarray  # [478, 3] x, y in px; z in the same px scale (MediaPipe z * width)
    blendshapes: np.ndarray  # [52] ARKit order (index 0 is _neutral)
    matrix: np.ndarray  # [4, 4] facial transformation matrix (canonical face cm -> MediaPipe camera)

    @property
    def box(self) -> np.ndarray:
        """[4] x0, y0, x1, y1 of the landmarks."""
        xy = self.landmarks[:, :2]
        return np.concatenate([xy.min(0), xy.max(0)])


def face_landmarker_path(settings: Settings | None) -> Path:
    from shared.model_files import model_path

    return model_path("face_landmarker", settings)


@contextmanager
def open_face_landmarker(
    settings: Settings | None,
    *,
    video: bool = True,
    num_faces: int = 1,
    min_confidence: float = 0.5,
    model_file: Path | None = None,
):
    """The project's one FaceLandmarker (landmarks, blendshapes and transformation matrices).

    ``video=True``: VIDEO mode, which tracks between frames (faster and steadier; frames go to
    ``detect_faces`` with increasing timestamps). ``video=False``: IMAGE mode, for unrelated images
    (``detect_faces(..., timestamp_ms=None)``). ``model_file`` overrides the checksum-verified model
    file the settings name (for a caller that already resolved it).
    """
    from mediapipe.tasks.python import BaseOptions, vision

    model = model_file if model_file is not None else face_landmarker_path(settings)
    options = vision.FaceLandmarkerOptions(
        base_options=BaseOptions(model_asset_path=str(model)),
        running_mode=vision.RunningMode.VIDEO if video else vision.RunningMode.IMAGE,
        num_faces=num_faces,
        min_face_detection_confidence=min_confidence,
        min_face_presence_confidence=min_confidence,
        min_tracking_confidence=min_confidence,
        output_face_blendshapes=True,
        output_facial_transformation_matrixes=True,
    )
    landmarker = vision.FaceLandmarker.create_from_options(options)
    try:
        yield landmarker
    finally:
        landmarker.close()


def detect_faces(landmarker, rgb: np.ndarray, timestamp_ms: int | None) -> list[FaceResult]:
    """All faces in one RGB frame [H, W, 3] uint8, with coordinates in that frame's pixels.

    ``timestamp_ms``: the frame's time for a VIDEO-mode landmarker (increasing); None for IMAGE mode.
    """
    import mediapipe as mp

    h, w = rgb.shape[:2]
    image = mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(rgb))
    if timestamp_ms is None:
        result = landmarker.detect(image)
    else:
        result = landmarker.detect_for_video(image, int(timestamp_ms))
    faces = []
    for i, lms in enumerate(result.face_landmarks):
        arr = np.array([(p.x * w, p.y * h, p.z * w) for p in lms], dtype=np.float32)  # [478, 3]
        bs = np.zeros(N_BLENDSHAPES, dtype=np.float32)
        if result.face_blendshapes and i < len(result.face_blendshapes):
            for c in result.face_blendshapes[i]:
                if 0 <= c.index < N_BLENDSHAPES:
                    bs[c.index] = c.score
        mat = np.eye(4, dtype=np.float32)
        if result.facial_transformation_matrixes and i < len(result.facial_transformation_matrixes):
            mat = np.asarray(result.facial_transformation_matrixes[i], dtype=np.float32).reshape(4, 4)
        faces.append(FaceResult(arr, bs, mat))
    return faces


@contextmanager
def open_segmenter(settings: Settings | None) -> Iterator:
    """Selfie (person vs background) segmentation, IMAGE mode: one soft person mask per frame."""
    from mediapipe.tasks.python import BaseOptions, vision

    from shared.model_files import model_path

    options = vision.ImageSegmenterOptions(
        base_options=BaseOptions(model_asset_path=str(model_path("selfie_segmenter", settings))),
        running_mode=vision.RunningMode.IMAGE,
        output_confidence_masks=True,
        output_category_mask=False,
    )
    segmenter = vision.ImageSegmenter.create_from_options(options)
    try:
        yield segmenter
    finally:
        segmenter.close()


def person_mask(segmenter, rgb: np.ndarray) -> np.ndarray:
    """Soft person probability [H, W] float32 in 0..1 for an RGB frame [H, W, 3]."""
    import mediapipe as mp

    result = segmenter.segment(mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(rgb)))
    masks = result.confidence_masks
    # The selfie model has one output channel (person); multiclass models list background first.
    mask = masks[0] if len(masks) == 1 else masks[-1]
    return np.asarray(mask.numpy_view(), dtype=np.float32).reshape(rgb.shape[:2]).copy()
