"""The ``whisper`` audio encoder (issue 23): real whisper-base on the CPU, real espeak-ng speech."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from preprocess_helpers import tiny_settings

from gpu_worker.media.audio import write_wav
from gpu_worker.preprocess import audio as A
from gpu_worker.preprocess import whisper_features as W

SENTENCE_A = "The quick brown fox jumps over the lazy dog, then runs back into the quiet forest."
SENTENCE_B = "Please call me tomorrow morning about the weekly budget meeting at nine."
LONG_TEXT = (
    "Once upon a time there was a small village by the sea. Every morning the fishermen sailed out "
    "before sunrise and came back at noon with their nets full. The children ran down to the harbour "
    "to watch the boats. In the evening the whole village gathered in the square to eat, sing and tell "
    "stories about the great storms of the past. One winter a stranger arrived with a wooden box."
)

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")


def espeak(text: str, voice: str, path: Path) -> np.ndarray:
    """``text`` spoken by espeak-ng ``voice``, as 16 kHz mono float32 (also left at ``path``)."""
    subprocess.run(["espeak-ng", "-v", voice, "-w", str(path), text], check=True, timeout=60)
    return np.asarray(A._load_16k(path), np.float32)


def feats(samples: np.ndarray, settings, level: str | None = A.LEVEL_NORM) -> np.ndarray:
    return A.compute_audio_features(None, "whisper", settings, samples=samples, level=level)[0]


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of matching rows of [N, ...] arrays: [N]."""
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-9)


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    return tiny_settings(tmp_path_factory.mktemp("whisper"))


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> np.ndarray:
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    return espeak(SENTENCE_A, "en-us", tmp_path_factory.mktemp("speech") / "a.wav")


def test_features_shape_dtype_and_frame_grid_at_any_sample_rate(speech, settings, tmp_path):
    """[N, 2, 512] float32 at 25 fps model time, standardized per state; the same clip at 44.1 kHz or
    8 kHz (any file the render gets) gives the same grid, and delaying the speech by 10 video frames
    (0.4 s) moves the features by exactly 10 frames."""
    from scipy.signal import resample_poly

    n = A.frames_for_audio(len(speech))
    ref = feats(speech, settings)
    assert ref.shape == (n, 2, 512) and ref.dtype == np.float32 and np.isfinite(ref).all()
    assert np.allclose(ref.mean(-1), 0, atol=1e-4) and np.allclose(ref.std(-1), 1, atol=1e-3)
    for rate, floor in ((44_100, 0.95), (8_000, 0.8)):
        path = tmp_path / f"a{rate}.wav"
        write_wav(path, resample_poly(speech, rate, A.SAMPLE_RATE).astype(np.float32), rate)
        other, _ = A.compute_audio_features(path, "whisper", settings)
        assert other.shape == ref.shape, rate
        print(rate, "Hz: similarity", cosine(other, ref).mean())
        assert cosine(other, ref).mean() > floor, rate  # 8 kHz loses the band above 4 kHz
    delayed = np.concatenate([np.zeros(int(0.4 * A.SAMPLE_RATE), np.float32), speech])
    moved = feats(delayed, settings)
    assert len(moved) == n + 10
    lag = [cosine(moved[15 + k : n + k - 5], ref[5 : n - 15]).mean() for k in (-5, -1, 0, 1, 5)]
    print("lag similarity", np.round(lag, 3))
    # best at exactly 10 frames (0.4 s), by far (measured 0.75 there, 0.55-0.57 one frame off: the
    # states keep some of their position in the 30 s window, so a shifted window is no perfect copy)
    assert int(np.argmax(lag)) == 2 and lag[2] > 0.65 and lag[2] - max(lag[1], lag[3]) > 0.1


def test_a_30_fps_video_gives_features_on_the_25_fps_model_clock(speech, settings, tmp_path):
    """A video's own rate does not matter: features count one per 40 ms of its audio (preprocessing
    resamples video to 25 fps; the render maps output frames to model time), on the dataset's grid."""
    from gpu_worker.media.frames import FrameWriter

    wav = tmp_path / "a.wav"
    write_wav(wav, speech, A.SAMPLE_RATE)
    video = tmp_path / "v30.mp4"
    n30 = int(len(speech) / A.SAMPLE_RATE * 30)
    with FrameWriter(video, fps=30, size=(64, 64), audio=wav, settings=settings) as writer:
        for i in range(n30):
            writer.write(np.full((64, 64, 3), i % 255, np.uint8))
    got, _ = A.compute_audio_features(video, "whisper", settings)
    ref = feats(speech, settings)
    assert abs(len(got) - len(ref)) <= 1 and got.shape[1:] == (2, 512)
    m = min(len(got), len(ref))
    assert cosine(got[:m], ref[:m]).mean() > 0.95  # the AAC round trip, not a shift


@needs_espeak
def test_long_audio_is_stitched_without_a_seam(settings, tmp_path):
    """A 40 s track runs in two encoder windows (20 s kept each, 5 s context). Its first frames agree
    with the features of its first 20 s alone, and around the 20 s join they agree with a window that
    has the join in its middle: no seam."""
    y = espeak(LONG_TEXT, "en-us", tmp_path / "long.wav")
    y = np.concatenate([y, y])[: 40 * A.SAMPLE_RATE]
    y = np.pad(y, (0, 40 * A.SAMPLE_RATE - len(y)))
    y, _ = A.normalize_level(y)  # one gain for all three runs (each would otherwise measure its own)
    whole = feats(y, settings, None)  # [1000, 2, 512]
    assert whole.shape == (1000, 2, 512)
    first = feats(y[: 20 * A.SAMPLE_RATE], settings, None)  # [500, 2, 512]
    # the first 15 s: both runs' windows start at 0; they differ only in what follows 20 s
    assert cosine(whole[:375], first[:375]).mean() > 0.95
    # A window starting at 10 s has the join (20 s, frame 500) in its middle. Its states see the same
    # audio at other window positions (Whisper's states keep some of their position: 0.76 measured for
    # the same audio 10 s apart, 0.48 for other audio), so the figure to beat is its agreement with the
    # stitched track away from the join (frames 300-400, all from the first window).
    mid = feats(y[10 * A.SAMPLE_RATE :], settings, None)  # frame k is whole's 250 + k
    join = cosine(whole[475:525], mid[225:275])
    away = cosine(whole[300:400], mid[50:150])
    print("similarity at the join", join.mean(), "away from it", away.mean())
    assert join.mean() > 0.6 and join.mean() > away.mean() - 0.05
    # and the frames either side of the join are no further apart than neighbours elsewhere
    steps = np.linalg.norm(np.diff(whole.reshape(len(whole), -1), axis=0), axis=1)  # [999]
    assert steps[499] < np.percentile(steps, 99)


def _dtw(a: np.ndarray, b: np.ndarray) -> float:
    """Mean cosine distance along the best monotonic alignment of two feature sequences."""
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    cost = 1.0 - a @ b.T  # [n, m]
    acc = np.full((len(a) + 1, len(b) + 1), np.inf)
    acc[0, 0] = 0.0
    steps = np.zeros_like(acc)
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            k = int(np.argmin((acc[i - 1, j - 1], acc[i - 1, j], acc[i, j - 1])))
            prev = ((i - 1, j - 1), (i - 1, j), (i, j - 1))[k]
            acc[i, j] = acc[prev] + cost[i - 1, j - 1]
            steps[i, j] = steps[prev] + 1
    return float(acc[-1, -1] / steps[-1, -1])


@needs_espeak
def test_features_follow_the_words_not_the_voice(settings, tmp_path):
    """The same sentence in a male and a female espeak-ng voice is closer (aligned in time) than the
    male voice saying another sentence: what the mouth needs, from any speaker."""
    male_a = feats(A.normalize_level(espeak(SENTENCE_A, "en-us", tmp_path / "ma.wav"))[0], settings)
    female_a = feats(A.normalize_level(espeak(SENTENCE_A, "en-us+f3", tmp_path / "fa.wav"))[0], settings)
    male_b = feats(A.normalize_level(espeak(SENTENCE_B, "en-us", tmp_path / "mb.wav"))[0], settings)
    same_words, same_voice = _dtw(male_a, female_a), _dtw(male_a, male_b)
    assert same_words < 0.8 * same_voice, (same_words, same_voice)


def test_cache_key_names_the_whisper_weights_and_normalization(settings):
    wid = A.encoder_weights_id("whisper", settings)
    assert "model.bin" in wid and W.NORM in wid and wid != A.encoder_weights_id("mel", settings)


@pytest.mark.slow
def test_whisper_dataset_trains_renders_and_mel_still_loads(tmp_path):
    """The whisper encoder end to end: a whisper dataset, a short tiny training, a render of new speech
    through the model's encoder; then the same dataset redone with mel (only its audio step) loads,
    and a rerun without an encoder keeps it mel."""
    from gpu_worker.model.config import profile_config, scale_steps
    from gpu_worker.model.dataparser import parse_dataset
    from gpu_worker.model.evaluate import evaluate
    from gpu_worker.model.trainer import train_model
    from gpu_worker.preprocess import run_preprocess
    from gpu_worker.sample import make_sample

    s = tiny_settings(tmp_path)
    clip = make_sample(tmp_path / "clip", seconds=4.0, size=128, seed=0, settings=s)
    ds = run_preprocess(clip.video, tmp_path / "ds", s, resolution=64, audio_encoder="whisper")
    m = json.loads((ds / "manifest.json").read_text())
    assert m["audio_encoder"] == "whisper" and m["audio_feature_shape"] == [2, 512]
    assert np.load(ds / "audio_features.npy").shape == (m["frame_count"], 2, 512)
    result = train_model(ds, tmp_path / "m", scale_steps(profile_config("tiny"), 0.1))
    assert result.stages_done == ["head", "lips", "torso"]
    metrics = json.loads(
        evaluate(tmp_path / "m", settings=s, audio=clip.speech, max_frames=8, previews=0).read_text()
    )
    assert metrics["new_audio"]["frames"] == 8
    run_preprocess(clip.video, ds, s, resolution=64, audio_encoder="mel")
    info = parse_dataset(ds)
    assert info.audio_encoder == "mel" and info.feature_shape == (80, 16)
    # a rerun that names no encoder keeps the published dataset's (a mel subject's model still fits)
    events: list = []
    run_preprocess(clip.video, ds, s, resolution=64, progress=lambda *e: events.append(e))
    assert [e[0] for e in events] == ["done"] and parse_dataset(ds).audio_encoder == "mel"


@needs_espeak
def test_streamed_render_features_equal_the_whole_track(settings, tmp_path):
    """The render's streamed path (gpu_worker.render.speech, window by window into an .npy file) gives
    the numbers of compute_audio_features on the whole track: a 25 s track, two encoder windows."""
    from gpu_worker.render import speech

    y = np.tile(espeak(LONG_TEXT, "en-gb+m4", tmp_path / "s.wav"), 2)[: 25 * A.SAMPLE_RATE]
    write_wav(tmp_path / "s25.wav", 0.3 * y / np.abs(y).max(), A.SAMPLE_RATE)
    track = speech.open_speech(tmp_path / "s25.wav", tmp_path / "work", settings)
    got, _ = speech.speech_features(track, "whisper", A.LEVEL_NORM, settings, tmp_path / "f.npy")
    ref, _ = A.compute_audio_features(None, "whisper", settings, samples=track.samples(0, track.n_samples))
    assert got.shape == ref.shape == (625, 2, 512)
    np.testing.assert_allclose(np.asarray(got), ref, atol=1e-5)
