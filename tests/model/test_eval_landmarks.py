"""LMD and eye agreement measure render and truth each through its own face tracker (real MediaPipe
face landmarker, on the real face photo the sample subject is made from)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from gpu_worker.model.dataparser import LIP_LOWER_INNER
from gpu_worker.model.eval.landmarks import LandmarkPairs, landmark_pairs
from gpu_worker.model.metrics import lmd, mouth_tracker
from gpu_worker.preprocess.landmarker import detect_faces, open_face_landmarker
from gpu_worker.sample.portrait import load_portrait

SIZE = 256
FRAMES = 12  # frames per stream: a shared tracker's bias settles within 4-5 of them


def _shift_face(img: np.ndarray, landmarks: np.ndarray, px: float) -> np.ndarray:
    """The whole picture moved ``px`` to the right (edges reflected): [H, W, 3] -> [H, W, 3]."""
    m = np.float32([[1, 0, px], [0, 1, 0]])
    return cv2.warpAffine(img, m, img.shape[1::-1], flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def _open_mouth(img: np.ndarray, landmarks: np.ndarray, px: float) -> np.ndarray:
    """The lower lip and chin pulled down by up to ``px`` (a smooth local warp); the rest unchanged."""
    h, w = img.shape[:2]
    cx, cy = landmarks[LIP_LOWER_INNER, :2]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    bump = np.exp(-(((xs - cx) / 14) ** 2 + ((ys - cy - 4) / 10) ** 2)).astype(np.float32)
    return cv2.remap(img, xs, ys - px * bump, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def _image_mode_lmd(settings, render: np.ndarray, truth: np.ndarray) -> float:
    """The reference: each image measured on its own (IMAGE mode: nothing carried between calls)."""
    with open_face_landmarker(settings, video=False) as landmarker:
        p, g = (detect_faces(landmarker, x, None)[0].landmarks[None] for x in (render, truth))
    return lmd(p, g)[0]


def _feed(pairs: LandmarkPairs, render: np.ndarray, truth: np.ndarray) -> dict:
    for _ in range(FRAMES):  # float frames in 0..1, as evaluation passes them
        pairs.add(render.astype(np.float32) / 255, truth.astype(np.float32) / 255)
    return pairs.result()


@pytest.mark.parametrize(
    ("change", "px", "shared_at_most"),
    [(_shift_face, 8.0, 0.8), (_open_mouth, 8.0, 0.7)],
    ids=["face_shifted_8px", "lower_lip_down_8px"],
)
def test_lmd_has_one_tracker_per_stream(settings, change, px, shared_at_most):
    """Measured (MediaPipe face_landmarker.task, astronaut portrait at 256 px, 12 frames per stream,
    40 ms apart, the render changed as below and otherwise the truth's twin):

    | render vs truth            | IMAGE mode | one tracker per stream | one shared VIDEO tracker |
    |----------------------------|-----------:|-----------------------:|-------------------------:|
    | face shifted 4 / 8 / 16 px | 4.1 / 8.1 / 16.0 | 4.0 / 8.0 / 16.0 | 2.2 / 5.6 / 13.6 |
    | face shifted 8 px down     | 7.9        | 8.0                    | 5.9                      |
    | face scaled 1.1            | 1.24       | 1.28                   | 0.48                     |
    | lower lip down 4 / 8 px    | 1.32 / 2.05 | 1.27 / 2.30           | 0.50 / 1.19              |

    (LMD in px.) Fed render, truth, render, truth..., one VIDEO-mode tracker pulls each stream's
    landmarks toward the other's: the first pair is measured right, then the bias settles within
    4-5 frames at about 2-3 px (30-60 % of the true LMD here). It shrinks when the calls are further
    apart in time (an 8 px shift measured 7.2 px with 200 ms between calls, 7.6 px with 5 s), so it is
    mostly the tracker's temporal landmark filter, partly the region carried from the previous frame.
    Through LandmarkPairs here, 8 px cases: shift 8.10 (IMAGE) / 8.00 (per stream) / 5.66 (shared);
    lower lip 2.05 / 2.30 / 1.17. The per-stream measurement must match the IMAGE-mode reference; the
    shared tracker, measured on the same frames through the same LandmarkPairs, must show the bias
    (else this test has lost its power to tell them apart)."""
    portrait = load_portrait(SIZE, settings)
    truth = portrait.image  # [SIZE, SIZE, 3] uint8
    render = change(truth, portrait.landmarks, px)
    reference = _image_mode_lmd(settings, render, truth)
    with landmark_pairs(settings) as pairs:  # what self-driven evaluation uses
        assert pairs is not None and pairs.render_tracker is not pairs.truth_tracker
        measured = _feed(pairs, render, truth)
    assert measured["lmd_frames"] == FRAMES
    # per stream: within 25 % of the reference (measured 1 % and 12 %); shared: 30 % and 43 % under it
    assert abs(measured["lmd_px"] / reference - 1) < 0.25, (measured["lmd_px"], reference)
    with mouth_tracker(settings) as tracker:
        biased = _feed(LandmarkPairs(tracker, tracker), render, truth)
    assert biased["lmd_px"] < shared_at_most * reference, (biased["lmd_px"], reference)


def test_eye_agreement_comes_with_lmd(settings):
    """The eye keys come from the same per-stream landmarks: identical streams agree exactly."""
    truth = load_portrait(SIZE, settings).image
    with landmark_pairs(settings) as pairs:
        res = _feed(pairs, truth, truth.copy())
    assert res["lmd_px"] < 0.05 and res["lmd_frames"] == FRAMES
    # a still face: openness never varies (no correlation), and no frame has closed eyes
    assert res["eyes_closed_frames"] == 0 and res["eye_openness_closed"] is None
