"""Landmark metrics of self-driven frames: LMD (mouth) and eye agreement, render against truth.

Each stream has its own face tracker. A VIDEO-mode MediaPipe FaceLandmarker carries state from one
call to the next (the region it looks in next and a temporal filter of the landmarks), so one tracker
fed render, truth, render, truth... pulls each stream's landmarks toward the other's and hides the
very differences LMD measures. Measured on the astronaut portrait (tests/model/test_eval_landmarks.py):
a render shifted 8 px from its truth measured 5.7 px of LMD through one shared tracker and 8.0 px through
one tracker per stream (8.1 px frame by frame in IMAGE mode); a lower lip pulled down 4 px, 0.50 px
shared against 1.27 px per stream.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from gpu_worker.model import metrics as M
from shared.settings import Settings


class LandmarkPairs:
    """Landmarks of rendered frames and of their truth frames, each stream through its own tracker.

    Both trackers see every frame of their stream in order, found or not, so each one's state follows
    its own stream only; frames where either face is missing are left out of the metrics.
    """

    def __init__(self, render_tracker: M.MouthTracker, truth_tracker: M.MouthTracker) -> None:
        self.render_tracker = render_tracker
        self.truth_tracker = truth_tracker
        self.render: list[np.ndarray] = []  # [478, 3] each, frames where both faces were found
        self.truth: list[np.ndarray] = []

    def add(self, render: np.ndarray, truth: np.ndarray) -> None:
        """One frame of each stream: RGB [H, W, 3], float 0..1 or uint8."""
        p = self.render_tracker(render)
        g = self.truth_tracker(truth)
        if p is not None and g is not None:
            self.render.append(p)
            self.truth.append(g)

    @property
    def frames(self) -> int:
        return len(self.render)

    def landmarks(self) -> tuple[np.ndarray, np.ndarray]:
        """(render, truth) landmarks [F, 478, 3] each, over the frames where both faces were found."""
        if not self.render:
            empty = np.zeros((0, 478, 3), np.float32)
            return empty, empty
        return np.stack(self.render), np.stack(self.truth)

    def result(self) -> dict:
        """``lmd_px``, ``lmd`` (None where no frame had both faces), ``lmd_frames`` and the eye keys of
        ``metrics.eye_agreement`` where there were such frames."""
        if not self.render:
            return {"lmd_px": None, "lmd": None}
        pred, gt = self.landmarks()
        lmd_px, lmd = M.lmd(pred, gt)
        return {"lmd_px": lmd_px, "lmd": lmd, "lmd_frames": self.frames, **M.eye_agreement(pred, gt)}


@contextmanager
def landmark_pairs(settings: Settings) -> Iterator[LandmarkPairs | None]:
    """A LandmarkPairs with two trackers of its own (one per stream), or None where the face
    landmarker is unavailable (no model file)."""
    with M.mouth_tracker(settings) as render, M.mouth_tracker(settings) as truth:
        yield LandmarkPairs(render, truth) if render is not None and truth is not None else None
