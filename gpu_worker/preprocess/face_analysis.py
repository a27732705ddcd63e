"""Pass 2 face analysis on the crop: landmarks, blendshapes and matrices per frame, then gap handling.

A frame without a face never stops the job: short gaps (up to ``settings.face_gap_max_s``) between
two detections are interpolated; longer gaps and the ends of the clip before the first / after the last
face are marked unusable (they hold the nearest usable frame's values so every array stays NaN-free).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from gpu_worker.preprocess.errors import ClipTooShortError, NoFaceError, TooManyUnusableFramesError
from gpu_worker.preprocess.landmarker import N_BLENDSHAPES, N_LANDMARKS, FaceResult, detect_faces
from shared.settings import Settings


class FaceAnalyzer:
    """Feeds crop frames in order to a VIDEO-mode landmarker and keeps the followed face's arrays."""

    def __init__(self, landmarker, resolution: int, fps: int = 25) -> None:
        self.landmarker = landmarker
        self.resolution = resolution
        self.fps = fps
        self.landmarks: list[np.ndarray] = []
        self.blendshapes: list[np.ndarray] = []
        self.matrices: list[np.ndarray] = []
        self.detected: list[bool] = []
        self._last_centre = np.array([resolution / 2, resolution / 2])

    def process(self, index: int, crop_rgb: np.ndarray) -> FaceResult | None:
        faces = detect_faces(self.landmarker, crop_rgb, index * 1000 // self.fps)
        face = self._pick(faces)
        if face is None:
            self.landmarks.append(np.full((N_LANDMARKS, 3), np.nan, np.float32))
            self.blendshapes.append(np.full(N_BLENDSHAPES, np.nan, np.float32))
            self.matrices.append(np.full((4, 4), np.nan, np.float32))
        else:
            self.landmarks.append(face.landmarks)
            self.blendshapes.append(face.blendshapes)
            self.matrices.append(face.matrix)
            self._last_centre = face.landmarks[:, :2].mean(0)
        self.detected.append(face is not None)
        return face

    def _pick(self, faces: list[FaceResult]) -> FaceResult | None:
        # The crop was chosen around the followed person: keep the face nearest to where it was last seen,
        # and ignore small faces of passers-by entering the crop.
        if not faces:
            return None
        sizes = [float(np.ptp(f.landmarks[:, 1])) for f in faces]
        dists = [float(np.linalg.norm(f.landmarks[:, :2].mean(0) - self._last_centre)) for f in faces]
        best = int(np.argmin(np.asarray(dists) - 0.5 * np.asarray(sizes)))
        if sizes[best] < 0.08 * self.resolution:
            return None
        return faces[best]

    def raw(self) -> RawFaceData:
        return RawFaceData(
            landmarks=np.stack(self.landmarks)
            if self.landmarks
            else np.zeros((0, N_LANDMARKS, 3), np.float32),
            blendshapes=np.stack(self.blendshapes)
            if self.blendshapes
            else np.zeros((0, N_BLENDSHAPES), np.float32),
            matrices=np.stack(self.matrices) if self.matrices else np.zeros((0, 4, 4), np.float32),
            detected=np.asarray(self.detected, dtype=bool),
        )


@dataclass
class RawFaceData:
    landmarks: np.ndarray  # [N, 478, 3], NaN where no face
    blendshapes: np.ndarray  # [N, 52], NaN where no face
    matrices: np.ndarray  # [N, 4, 4], NaN where no face
    detected: np.ndarray  # [N] bool


@dataclass
class FaceData:
    landmarks: np.ndarray  # [N, 478, 3] NaN-free
    blendshapes: np.ndarray  # [N, 52] NaN-free
    matrices: np.ndarray  # [N, 4, 4] NaN-free
    detected: np.ndarray  # [N] bool: the landmarker saw the face in this very frame
    usable: np.ndarray  # [N] bool: detected or inside an interpolated short gap
    unusable_reasons: dict[str, list[list[int]]] = field(
        default_factory=dict
    )  # reason -> [[first, last], ...]


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[first, last] index pairs of the True runs of a 1-D bool array."""
    padded = np.concatenate([[False], mask, [False]]).astype(np.int8)
    d = np.diff(padded)
    return list(zip(np.flatnonzero(d == 1).tolist(), (np.flatnonzero(d == -1) - 1).tolist(), strict=True))


def _fill(values: np.ndarray, known: np.ndarray, interpolate: np.ndarray) -> np.ndarray:
    """Linear interpolation over ``interpolate`` frames and nearest-known values elsewhere. [N, ...]"""
    n = len(values)
    flat = values.reshape(n, -1).astype(np.float64)
    idx = np.flatnonzero(known)
    out = flat.copy()
    t = np.arange(n)
    # Nearest known frame for every frame (used outside interpolated gaps).
    pos = np.clip(np.searchsorted(idx, t), 1, max(1, len(idx) - 1))
    left, right = idx[pos - 1], idx[np.minimum(pos, len(idx) - 1)]
    nearest = np.where(np.abs(t - left) <= np.abs(right - t), left, right)
    missing = ~known
    out[missing] = flat[nearest[missing]]
    if interpolate.any():
        fi = np.flatnonzero(interpolate)
        for c in range(flat.shape[1]):
            out[fi, c] = np.interp(fi, idx, flat[idx, c])
    return out.reshape(values.shape).astype(values.dtype)


def finalize_faces(raw: RawFaceData, settings: Settings, fps: int = 25) -> FaceData:
    """Interpolate short gaps, mark long ones unusable, and fail clearly when too little is left."""
    n = len(raw.detected)
    det = raw.detected
    if n == 0 or not det.any():
        raise NoFaceError("no face was found in the cropped video")
    max_gap = int(round(settings.face_gap_max_s * fps))
    interpolate = np.zeros(n, dtype=bool)
    reasons: dict[str, list[list[int]]] = {}
    for first, last in _runs(~det):
        if first == 0 or last == n - 1:
            reasons.setdefault("no face at the start or end of the clip", []).append([first, last])
        elif last - first + 1 > max_gap:
            reasons.setdefault(f"no face for longer than {settings.face_gap_max_s:g} s", []).append(
                [first, last]
            )
        else:
            interpolate[first : last + 1] = True
    usable = det | interpolate
    landmarks = _fill(raw.landmarks, det, interpolate)
    blendshapes = _fill(raw.blendshapes, det, interpolate)
    matrices = _fill(raw.matrices, det, interpolate)
    bad = 1.0 - usable.mean()
    if bad > settings.max_unusable_fraction:
        raise TooManyUnusableFramesError(
            f"{bad:.0%} of the frames have no usable face (more than the allowed "
            f"{settings.max_unusable_fraction:.0%}); upload a clip where the face is visible throughout"
        )
    usable_s = usable.sum() / fps
    if usable_s < settings.min_train_seconds:
        raise ClipTooShortError(
            f"only {usable_s:.1f} s of the clip show a usable face; at least {settings.min_train_seconds:g} s are needed"
        )
    return FaceData(landmarks, blendshapes, matrices, det.copy(), usable, reasons)
