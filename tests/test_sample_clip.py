"""The sample clip end to end: what MediaPipe sees agrees with truth.json, and the files are what they claim.

One 6 s, 256 px clip is made per module (about 5 s) and measured once (about 3 s).
"""

from __future__ import annotations

import os
import wave
from pathlib import Path

import numpy as np
import pytest

from gpu_worker.sample import SampleResult, make_sample
from gpu_worker.sample.animation import PITCH_DEG, ROLL_DEG, YAW_DEG
from gpu_worker.sample.geometry import euler_to_matrix
from gpu_worker.sample.measure import Check, check_sample
from gpu_worker.sample.truth import Truth, load_truth
from shared.settings import Settings

SHARED_MODELS = Path(__file__).resolve().parents[2] / "shared" / "models"
SECONDS, SIZE = 6.0, 256

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def module_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    root = tmp_path_factory.mktemp("sample_settings")
    return Settings(
        environment="test",
        data_dir=root / "data",
        model_dir=root / "models",
        model_sources=os.environ.get("SYNCTALK_MODEL_SOURCES") or str(SHARED_MODELS),
        model_download=False,
    )


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory, module_settings: Settings) -> SampleResult:
    out = tmp_path_factory.mktemp("sample_clip") / "subject"
    return make_sample(out, seconds=SECONDS, size=SIZE, seed=0, settings=module_settings)


@pytest.fixture(scope="module")
def truth(clip: SampleResult) -> Truth:
    return load_truth(clip.truth)


@pytest.fixture(scope="module")
def seen(clip: SampleResult, module_settings: Settings) -> Check:
    return check_sample(clip.out_dir, module_settings)


def test_mediapipe_finds_the_face_in_nearly_every_frame(seen: Check) -> None:
    assert seen.detection_rate >= 0.99


def test_measured_lip_gap_follows_truth_mouth_opening(seen: Check) -> None:
    assert seen.lip_gap_r >= 0.9


def test_measured_head_rotation_follows_truth(seen: Check) -> None:
    # MediaPipe's own pose is noisy (mouth and blinks tilt it by ~1 degree), so this is a sanity check
    # of axes, signs and scale, not the stabilizer's accuracy target.
    assert seen.yaw_r >= 0.9
    assert seen.pitch_r >= 0.5
    assert seen.yaw_mae_deg < 1.5


def test_video_is_h264_aac_at_25_fps_with_the_promised_frames(clip: SampleResult) -> None:
    import av

    with av.open(str(clip.video)) as container:
        vs, aus = container.streams.video[0], container.streams.audio[0]
        assert vs.codec_context.name == "h264"
        assert aus.codec_context.name == "aac"
        assert float(vs.average_rate) == pytest.approx(25.0)
        assert (vs.codec_context.width, vs.codec_context.height) == (SIZE, SIZE)
        frames = sum(1 for _ in container.decode(video=0))
    assert frames == clip.n_frames == round(SECONDS * 25)


def test_speech_wav_keeps_the_engine_rate_and_the_clip_length(clip: SampleResult, truth: Truth) -> None:
    with wave.open(str(clip.speech), "rb") as w:
        rate, n, channels = w.getframerate(), w.getnframes(), w.getnchannels()
        pcm = np.frombuffer(w.readframes(n), np.int16)
    assert channels == 1
    assert rate == truth.speech_rate == clip.sample_rate == truth.raw["speech"]["sample_rate"]
    assert n == round(clip.n_frames * rate / 25)
    assert np.abs(pcm).max() > 3000  # actual speech, not silence


def test_truth_frames_are_consistent(truth: Truth, clip: SampleResult) -> None:
    assert truth.n_frames == clip.n_frames
    for euler, rot in zip(truth.euler_deg, truth.rotation, strict=True):
        np.testing.assert_allclose(rot, euler_to_matrix(*euler), atol=1e-6)
        np.testing.assert_allclose(rot @ rot.T, np.eye(3), atol=1e-6)
    assert truth.mouth_open.min() >= 0.0 and truth.mouth_open.max() <= 1.0
    assert truth.mouth_open.max() > 0.8 and truth.mouth_open.min() < 0.1  # the mouth opens and closes
    assert truth.blink.max() > 0.5  # at least one blink in 6 s
    cam = truth.camera
    assert cam["model"] == "pinhole" and cam["fx"] > 0 and cam["cx"] == SIZE / 2


def test_head_motion_is_small_smooth_and_3d(truth: Truth) -> None:
    limits = np.array([PITCH_DEG, YAW_DEG, ROLL_DEG]) + 1e-6
    assert np.all(np.abs(truth.euler_deg) <= limits)
    assert np.all(np.abs(truth.euler_deg).max(axis=0) > 0.5 * limits)  # all three axes really move
    assert np.abs(np.diff(truth.euler_deg, axis=0)).max() < 0.5  # degrees per frame: no jumps
    assert np.abs(truth.translation[:, 2]).max() > 1.0  # depth changes too, not just a 2D shift


def test_mouth_opening_is_time_aligned_with_the_speech(clip: SampleResult, truth: Truth) -> None:
    with wave.open(str(clip.speech), "rb") as w:
        rate = w.getframerate()
        samples = np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float64)
    per_frame = rate // 25  # 882 at 22,050 Hz
    rms = np.sqrt(
        np.mean(samples[: per_frame * truth.n_frames].reshape(truth.n_frames, per_frame) ** 2, axis=1)
    )
    loud = np.log10(rms + 1.0)
    aligned = np.corrcoef(loud, truth.mouth_open)[0, 1]
    shifted = np.corrcoef(loud[5:], truth.mouth_open[:-5])[0, 1]  # 200 ms off
    assert aligned > 0.7
    assert aligned > shifted + 0.1
