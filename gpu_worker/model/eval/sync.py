"""Lip-sync measures: AVE sync confidence on mouth crops, the mouth opening per rendered frame, and a
video's true lip gap (the truth new audio is compared with)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gpu_worker.model import metrics as M
from gpu_worker.model.eval.context import EvaluationError
from shared.settings import Settings

MIN_SYNC_FRAMES = 8  # fewer crops than this give no meaningful offset curve


def lip_stacks(crops: np.ndarray) -> np.ndarray:
    """Per-frame crops [F, 32, 64] uint8 -> 5-frame stacks [F, 5, 32, 64] float (clamped at the end)."""
    n = len(crops)
    idx = np.minimum(np.arange(n)[:, None] + np.arange(5)[None], n - 1)
    return crops[idx].astype(np.float32) / 255.0


def ave_sync(towers: tuple | None, windows: np.ndarray | None, crops: np.ndarray) -> dict | None:
    """AVE sync of mouth crops [F, 32, 64] with mel windows [F, 80, 16]: ``confidence`` (peak - median
    of the sync probability over offsets -7..7), ``best_offset``, ``score_at_0``; None without towers."""
    if towers is None or windows is None or len(crops) < MIN_SYNC_FRAMES:
        return None
    from gpu_worker.ave.sync import offset_curve

    curve = offset_curve(*towers, windows, lip_stacks(crops), max_offset=min(7, len(crops) // 4))
    return {"confidence": curve.confidence, "best_offset": curve.best_offset, "score_at_0": curve.at_zero}


class MouthOpenings:
    """Mouth opening per frame: MediaPipe landmarks where found on (almost) every frame, else dark pixels."""

    def __init__(self) -> None:
        self.landmarks: list[np.ndarray | None] = []  # [478, 3] or None per frame
        self.dark: list[float] = []

    def add(self, lms: np.ndarray | None, dark: float) -> None:
        self.landmarks.append(lms)
        self.dark.append(dark)

    def values(self) -> tuple[np.ndarray, str]:
        """(opening [F], "landmarks" or "dark_pixels"); frames without landmarks are interpolated."""
        found = [lm is not None for lm in self.landmarks]
        if found and np.mean(found) >= 0.9:
            idx = np.flatnonzero(found)
            vals = M.mouth_opening(np.stack([self.landmarks[i] for i in idx]))
            return np.interp(np.arange(len(found)), idx, vals), "landmarks"
        return np.asarray(self.dark), "dark_pixels"


def video_lip_gap(video: str | Path, settings: Settings, max_frames: int | None = None) -> np.ndarray:
    """Inner-lip gap / eye distance per frame of a video at 25 fps (MediaPipe), gaps interpolated [F]."""
    from gpu_worker.media.frames import FrameReader

    values: list[float] = []
    with M.mouth_tracker(settings) as tracker:  # this video's own tracker
        if tracker is None:
            raise EvaluationError("the face landmarker is needed to measure the truth video's lips")
        with FrameReader(video, fps=25, settings=settings) as reader:
            for k, frame in enumerate(reader):
                if max_frames is not None and k >= max_frames:
                    break
                lms = tracker(frame)
                values.append(float(M.mouth_opening(lms[None])[0]) if lms is not None else np.nan)
    arr = np.asarray(values)
    ok = np.isfinite(arr)
    if not ok.any():
        raise EvaluationError(f"no face found in the truth video {video}")
    return np.interp(np.arange(arr.size), np.flatnonzero(ok), arr[ok])
