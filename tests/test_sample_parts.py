"""The sample subject's parts: rotation conventions, the head rig, speech, drives, options and atomic output."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from gpu_worker.sample import make_sample
from gpu_worker.sample.animation import make_drives
from gpu_worker.sample.errors import SampleError, SampleOptionError
from gpu_worker.sample.geometry import cv_to_gl_rotation, euler_to_matrix, matrix_to_euler
from gpu_worker.sample.speech import fit_to_length, pick_text, speech_track
from gpu_worker.sample.truth import load_truth
from shared.settings import Settings

NOSE_TIP, FOREHEAD, LIP_TOP, LIP_BOTTOM = 1, 10, 13, 14
SHARED_MODELS = Path(__file__).resolve().parents[2] / "shared" / "models"


# ---- conventions ------------------------------------------------------------------------------------
@pytest.mark.parametrize("angles", [(0.0, 0.0, 0.0), (3.0, -2.0, 1.0), (-10.0, 25.0, -40.0)])
def test_euler_round_trip(angles: tuple[float, float, float]) -> None:
    r = euler_to_matrix(*angles)
    np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(r) == pytest.approx(1.0)
    np.testing.assert_allclose(matrix_to_euler(r), angles, atol=1e-9)


def test_euler_order_matches_scipy_extrinsic_xyz() -> None:
    from scipy.spatial.transform import Rotation

    angles = [4.0, -3.0, 2.0]
    expected = Rotation.from_euler("xyz", angles, degrees=True).as_matrix()
    np.testing.assert_allclose(euler_to_matrix(*angles), expected, atol=1e-12)


def test_gl_axes_keep_yaw_and_flip_nothing_else() -> None:
    # A turn about the vertical axis stays a turn about the vertical axis in y-up axes.
    r = cv_to_gl_rotation(euler_to_matrix(0.0, 10.0, 0.0))
    assert r[1, 1] == pytest.approx(1.0)
    np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-12)


# ---- the head rig -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def rig_and_portrait(tmp_path_factory: pytest.TempPathFactory):
    from gpu_worker.sample.head_rig import HeadRig
    from gpu_worker.sample.portrait import load_portrait

    root = tmp_path_factory.mktemp("rig")
    settings = Settings(
        environment="test",
        model_dir=root / "models",
        model_sources=os.environ.get("SYNCTALK_MODEL_SOURCES") or str(SHARED_MODELS),
        model_download=False,
    )
    portrait = load_portrait(128, settings)
    return HeadRig(portrait), portrait


def _moved(rig, portrait, idx: int, euler=(0.0, 0.0, 0.0), opening: float = 0.0) -> np.ndarray:
    uv = portrait.landmarks[[idx], :2]
    return rig.move_points(uv, euler_to_matrix(*euler), np.zeros(3), opening)[0] - uv[0]


def test_rest_pose_renders_the_photo_unchanged(rig_and_portrait) -> None:
    import cv2

    rig, portrait = rig_and_portrait
    src = rig.source_map(np.eye(3), np.zeros(3), 0.0)
    frame = cv2.remap(portrait.image, src, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)
    assert np.abs(frame.astype(int) - portrait.image.astype(int)).max() <= 1


def test_rotation_signs_follow_the_documented_convention(rig_and_portrait) -> None:
    rig, portrait = rig_and_portrait
    assert _moved(rig, portrait, NOSE_TIP, (0.0, 5.0, 0.0))[0] < -1.0  # +yaw: nose to the image left
    assert _moved(rig, portrait, NOSE_TIP, (5.0, 0.0, 0.0))[1] > 1.0  # +pitch: nose down
    assert _moved(rig, portrait, FOREHEAD, (0.0, 0.0, 5.0))[0] > 1.0  # +roll: top of head to the right


def test_yaw_moves_the_nose_more_than_the_cheek_contour(rig_and_portrait) -> None:
    # A real 3D turn: points nearer the camera shift differently from the face edge (parallax).
    rig, portrait = rig_and_portrait
    nose = _moved(rig, portrait, NOSE_TIP, (0.0, 6.0, 0.0))[0]
    cheek = _moved(rig, portrait, 234, (0.0, 6.0, 0.0))[0]
    assert abs(nose - cheek) > 0.02 * portrait.face_width


def test_jaw_opens_the_lower_lip_only(rig_and_portrait) -> None:
    rig, portrait = rig_and_portrait
    top = _moved(rig, portrait, LIP_TOP, opening=1.0)
    bottom = _moved(rig, portrait, LIP_BOTTOM, opening=1.0)
    assert np.abs(top).max() < 0.05
    assert bottom[1] == pytest.approx(rig.jaw_drop_px, rel=0.1)
    assert abs(_moved(rig, portrait, FOREHEAD, opening=1.0)[1]) < 0.05  # the upper head stays


def test_torso_and_background_stay_put(rig_and_portrait) -> None:
    rig, portrait = rig_and_portrait
    src = rig.source_map(euler_to_matrix(3.0, 4.0, 2.0), np.array([2.0, 1.0, 10.0]), 1.0)
    identity = rig.identity_map()
    n = portrait.size
    bottom_rows = slice(int(0.85 * n), n)  # shoulders and suit
    np.testing.assert_allclose(src[bottom_rows], identity[bottom_rows], atol=1e-3)
    assert np.abs(src - identity).max() > 1.0  # while the head does move


# ---- speech and drives ------------------------------------------------------------------------------
def test_fit_to_length_is_exact_and_repeats_short_speech() -> None:
    rng = np.random.default_rng(0)
    words = [np.full(1000, 0.5, np.float32), np.full(500, -0.5, np.float32)]
    out = fit_to_length(words, 8000, 20000, rng)
    assert out.shape == (20000,)
    assert (np.abs(out) > 0.1).sum() > 1500  # spoken more than once
    assert abs(out[-1]) < 0.05  # faded at the cut, no click
    assert fit_to_length(words, 8000, 1000, rng).shape == (1000,)


def test_same_seed_same_clip_different_seed_different_clip() -> None:
    a = speech_track(pick_text(0), n_frames=50, fps=25, seed=0)
    b = speech_track(pick_text(0), n_frames=50, fps=25, seed=0)
    c = speech_track(pick_text(1), n_frames=50, fps=25, seed=1)
    assert a.rate == 22050 and a.samples.size == 50 * 882
    np.testing.assert_array_equal(a.samples, b.samples)
    assert not np.allclose(a.samples, c.samples)
    da = make_drives(a.samples, a.rate, 50, 25, 256, 512.0, seed=0)
    db = make_drives(b.samples, b.rate, 50, 25, 256, 512.0, seed=0)
    dc = make_drives(c.samples, c.rate, 50, 25, 256, 512.0, seed=1)
    np.testing.assert_array_equal(da.euler_deg, db.euler_deg)
    assert np.abs(da.euler_deg - dc.euler_deg).max() > 0.5
    assert np.abs(da.mouth_open - dc.mouth_open).max() > 0.3


def test_mouth_stays_shut_in_silence() -> None:
    from gpu_worker.sample.animation import mouth_opening

    rate = 16000
    t = np.arange(rate * 2) / rate
    voice = (0.5 * np.sin(2 * np.pi * 500 * t) * (t >= 1.0)).astype(np.float32)  # silent, then a vowel
    m = mouth_opening(voice, rate, 50, 25)
    assert m[:24].max() < 0.05
    assert m[26:].min() > 0.5


def test_text_that_says_nothing_is_refused() -> None:
    with pytest.raises(SampleOptionError):
        speech_track("... !!!", n_frames=25, fps=25, seed=0)


# ---- options and atomic output ----------------------------------------------------------------------
@pytest.mark.parametrize("kwargs", [{"size": 127}, {"size": 16}, {"seconds": 0.2}, {"text": "  "}])
def test_bad_options_fail_before_anything_is_written(tmp_path: Path, settings: Settings, kwargs) -> None:
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(SampleOptionError):
        make_sample(work / "clip", settings=settings, **kwargs)
    assert list(work.iterdir()) == []


def test_a_failure_mid_render_leaves_nothing_behind(tmp_path: Path, settings: Settings) -> None:
    work = tmp_path / "work"
    work.mkdir()

    def progress(step: str, fraction: float, message: str) -> None:
        if step == "render" and fraction > 0.3:
            raise RuntimeError("worker killed")

    with pytest.raises(RuntimeError, match="worker killed"):
        make_sample(work / "clip", seconds=3.0, size=96, settings=settings, progress=progress)
    assert list(work.iterdir()) == []


def test_rewriting_an_existing_folder_replaces_all_three_files(tmp_path: Path, settings: Settings) -> None:
    out = tmp_path / "work" / "clip"
    out.mkdir(parents=True)
    (out / "keep.txt").write_text("mine")
    first = make_sample(out, seconds=1.0, size=96, seed=0, text="Hello there.", settings=settings)
    before = load_truth(first.truth)
    second = make_sample(out, seconds=1.0, size=96, seed=3, text="Good night.", settings=settings)
    after = load_truth(second.truth)
    assert before.raw["speech"]["text"] == "Hello there." and after.raw["speech"]["text"] == "Good night."
    assert (out / "keep.txt").read_text() == "mine"
    assert [p.name for p in out.parent.iterdir()] == ["clip"]  # no temp folders left


def test_load_truth_refuses_other_files(tmp_path: Path) -> None:
    bad = tmp_path / "truth.json"
    bad.write_text(json.dumps({"version": 1, "frames": [{"index": 0}]}))
    with pytest.raises(SampleError):
        load_truth(bad)
    with pytest.raises(SampleError):
        load_truth(tmp_path / "missing.json")
