"""What MediaPipe sees on a sample clip, compared with its truth: the clip's acceptance check.

Used by the tests and by ``synctalk sample --check``: detection rate, lip gap vs. truth mouth opening
(Pearson r), and head rotation from MediaPipe's facial transformation matrices vs. truth.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gpu_worker.preprocess.landmarker import FaceResult, detect_faces, open_face_landmarker
from gpu_worker.sample.geometry import CV_TO_GL, matrix_to_euler
from gpu_worker.sample.truth import Truth, load_truth
from shared.settings import Settings

LIP_TOP, LIP_BOTTOM = 13, 14
FACE_LEFT, FACE_RIGHT = 234, 454


@dataclass(frozen=True)
class Seen:
    detected: np.ndarray  # [T] bool
    lip_gap: np.ndarray  # [T] inner-lip distance / face width (NaN where no face)
    rotation_gl: np.ndarray  # [T, 3, 3] MediaPipe's head rotation, OpenGL axes (NaN where no face)


@dataclass(frozen=True)
class Check:
    detection_rate: float
    lip_gap_r: float  # Pearson r of the measured lip gap with truth mouth_open
    yaw_r: float  # Pearson r of measured vs. truth yaw (relative to the rest photo)
    pitch_r: float
    yaw_mae_deg: float
    pitch_mae_deg: float

    def to_dict(self) -> dict[str, float]:
        return {k: round(float(v), 4) for k, v in self.__dict__.items()}


def _read(face: FaceResult | None, width: int, height: int) -> tuple[float, np.ndarray] | None:
    """(lip gap / face width, head rotation [3, 3]) of the first face, measured in normalized image
    coordinates as MediaPipe reports them; None where no face was found."""
    if face is None:
        return None
    pts = face.landmarks[:, :2].astype(np.float64) / np.array([width, height])  # [478, 2]
    face_width = np.linalg.norm(pts[FACE_RIGHT] - pts[FACE_LEFT])
    gap = np.linalg.norm(pts[LIP_BOTTOM] - pts[LIP_TOP]) / max(face_width, 1e-9)
    return float(gap), face.matrix[:3, :3].astype(np.float64)


def _first(faces: list[FaceResult]) -> FaceResult | None:
    return faces[0] if faces else None


def rest_rotation_gl(size: int, settings: Settings | None = None) -> np.ndarray:
    """MediaPipe's rotation [3, 3] of the rest photo at ``size`` (the reference truth rotations are relative to)."""
    from gpu_worker.sample.portrait import load_portrait

    image = load_portrait(size, settings).image
    with open_face_landmarker(settings, video=False) as lmk:
        seen = _read(_first(detect_faces(lmk, image, None)), image.shape[1], image.shape[0])
    if seen is None:
        raise RuntimeError("MediaPipe found no face on the rest portrait")
    return seen[1]


def measure_clip(video: Path, settings: Settings | None = None) -> Seen:
    """Run the face landmarker on every frame of ``video`` (streamed, video mode as a tracker would)."""
    from gpu_worker.media.frames import FrameReader

    detected, gaps, rots = [], [], []
    with open_face_landmarker(settings) as lmk, FrameReader(video, settings=settings) as reader:
        for i, frame in enumerate(reader):
            faces = detect_faces(lmk, frame, int(i * 1000 / 25))  # VIDEO mode needs increasing times only
            seen = _read(_first(faces), frame.shape[1], frame.shape[0])
            detected.append(seen is not None)
            gaps.append(seen[0] if seen else np.nan)
            rots.append(seen[1] if seen else np.full((3, 3), np.nan))
    return Seen(np.array(detected), np.array(gaps), np.array(rots).reshape(-1, 3, 3))


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or np.std(a[ok]) == 0 or np.std(b[ok]) == 0:
        return float("nan")
    return float(np.corrcoef(a[ok], b[ok])[0, 1])


def compare(truth: Truth, seen: Seen, rest_gl: np.ndarray) -> Check:
    """Score what MediaPipe saw against the truth (rotations made relative to the rest photo)."""
    n = min(truth.n_frames, len(seen.detected))
    measured = np.full((n, 2), np.nan)  # pitch, yaw
    for i in range(n):
        if seen.detected[i]:
            rel_gl = seen.rotation_gl[i] @ rest_gl.T
            pitch, yaw, _ = matrix_to_euler(CV_TO_GL @ rel_gl @ CV_TO_GL)
            measured[i] = pitch, yaw
    true_py = truth.euler_deg[:n, :2]
    err = np.abs(measured - true_py)
    return Check(
        detection_rate=float(np.mean(seen.detected[:n])) if n else 0.0,
        lip_gap_r=_pearson(seen.lip_gap[:n], truth.mouth_open[:n]),
        yaw_r=_pearson(measured[:, 1], true_py[:, 1]),
        pitch_r=_pearson(measured[:, 0], true_py[:, 0]),
        yaw_mae_deg=float(np.nanmean(err[:, 1])) if np.isfinite(err[:, 1]).any() else float("nan"),
        pitch_mae_deg=float(np.nanmean(err[:, 0])) if np.isfinite(err[:, 0]).any() else float("nan"),
    )


def check_sample(out_dir: Path, settings: Settings | None = None) -> Check:
    """Measure ``out_dir``/subject.mp4 and compare it with ``out_dir``/truth.json."""
    truth = load_truth(Path(out_dir) / "truth.json")
    seen = measure_clip(Path(out_dir) / "subject.mp4", settings)
    return compare(truth, seen, rest_rotation_gl(truth.size[0], settings))
