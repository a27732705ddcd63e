"""Gap handling, expression, crop choice, split and the canonical face: the pure parts of preprocessing."""

from __future__ import annotations

import numpy as np
import pytest

from gpu_worker.preprocess.crop import CropBox, choose_crop, link_tracks
from gpu_worker.preprocess.dataset_writer import split_frames
from gpu_worker.preprocess.errors import ClipTooShortError, NoFaceError, TooManyUnusableFramesError
from gpu_worker.preprocess.expression import EXPRESSION_NAMES, expression_coefficients
from gpu_worker.preprocess.face_analysis import RawFaceData, finalize_faces


def _raw(detected: np.ndarray) -> RawFaceData:
    n = len(detected)
    t = np.arange(n, dtype=np.float32)
    lm = np.repeat(t[:, None, None], 478, 1).repeat(3, 2)  # value = frame index
    lm[~detected] = np.nan
    bs = np.repeat(t[:, None] / n, 52, 1)
    bs[~detected] = np.nan
    mat = np.repeat(np.eye(4, dtype=np.float32)[None], n, 0)
    mat[~detected] = np.nan
    return RawFaceData(lm, bs, mat, detected)


def test_short_gaps_interpolated_long_gaps_unusable(settings):
    s = settings.model_copy(
        update={"min_train_seconds": 1.0, "face_gap_max_s": 0.2, "max_unusable_fraction": 0.5}
    )
    det = np.ones(100, bool)
    det[10:14] = False  # 4 frames = 0.16 s: interpolated
    det[40:60] = False  # 0.8 s: unusable
    det[:2] = False  # before the first face: unusable
    face = finalize_faces(_raw(det), s)
    assert face.usable[10:14].all() and not face.usable[40:60].any() and not face.usable[:2].any()
    assert np.allclose(face.landmarks[12, 0, 0], 12.0)  # linear between frames 9 and 14
    assert np.allclose(face.landmarks[45, 0, 0], 39.0) or np.allclose(face.landmarks[45, 0, 0], 60.0)
    assert np.isfinite(face.landmarks).all() and np.isfinite(face.blendshapes).all()
    assert sum(len(v) for v in face.unusable_reasons.values()) == 2


def test_face_failures_are_typed(settings):
    s = settings.model_copy(update={"min_train_seconds": 1.0, "max_unusable_fraction": 0.3})
    with pytest.raises(NoFaceError):
        finalize_faces(_raw(np.zeros(50, bool)), s)
    det = np.ones(100, bool)
    det[20:80] = False
    with pytest.raises(TooManyUnusableFramesError, match="60%"):
        finalize_faces(_raw(det), s)
    with pytest.raises(ClipTooShortError):
        finalize_faces(_raw(np.ones(20, bool)), s)


def test_expression_is_smoothed_upper_face():
    rng = np.random.default_rng(0)
    bs = np.clip(0.5 + 0.2 * rng.standard_normal((200, 52)), 0, 1).astype(np.float32)
    ex = expression_coefficients(bs)
    assert ex.shape == (200, 7) and len(EXPRESSION_NAMES) == 7
    assert np.abs(np.diff(ex, axis=0)).mean() < np.abs(np.diff(bs[:, [1, 2, 3, 4, 5, 9, 10]], axis=0)).mean()


def test_split_last_eleventh_contiguous():
    usable = np.ones(110, bool)
    usable[50:60] = False
    split = split_frames(usable)
    assert len(split["val"]) == 9 and split["val"] == list(range(101, 110))
    assert not set(split["train"]) & set(split["val"]) and 55 not in split["train"]


def test_tracks_follow_the_largest_face_and_crop_fits():
    big = [np.array([400.0 + i, 200, 600 + i, 420]) for i in range(20)]
    small = [np.array([50.0, 50, 110, 120]) for _ in range(20)]
    tracks = link_tracks([(i * 5, [small[i], big[i]]) for i in range(20)], max_gap=25)
    assert len(tracks) == 2
    main = max(tracks, key=lambda t: t.total_area)
    assert main.boxes[0][0] == 400
    crop = choose_crop(main, 1280, 720, 256)
    assert crop.size <= 720 and crop.x0 >= 0 and crop.x0 + crop.size <= 1280 and crop.y0 + crop.size <= 720
    assert crop.x0 < 400 and crop.x0 + crop.size > 619  # the whole head over its motion


def test_crop_matrix_maps_crop_pixels_to_source():
    rng = np.random.default_rng(1)
    src = rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)
    src = np.repeat(np.repeat(src[::10, ::10], 10, 0), 10, 1)  # blocky so resampling is exact inside blocks
    crop = CropBox(400, 300, 100, 50, 200, 100)
    out = crop.apply(src)  # [100, 100, 3]
    m = crop.matrix_crop_to_source()
    x, y = 37, 61
    sx, sy, _ = m @ np.array([x, y, 1.0])
    assert np.array_equal(out[y, x], src[int(round(sy)), int(round(sx))])


def test_canonical_face_from_task_file(settings):
    from gpu_worker.preprocess.canonical_face import load_canonical_face
    from gpu_worker.preprocess.landmarker import face_landmarker_path
    from gpu_worker.preprocess.stabilizer.rigidity import landmark_rigidity

    face = load_canonical_face(face_landmarker_path(settings))
    assert face.vertices.shape == (468, 3) and face.triangles.max() == 467
    assert face.vertices[1, 2] > 7  # nose tip points out of the face (+z), in cm
    w = landmark_rigidity(face)
    assert w[1] == 1.0 and w[13] < 0.1 and w[159] < 0.1  # nose rigid; lip and eyelid not
