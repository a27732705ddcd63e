"""normalize_video / normalize_audio: constant 25 fps upright H.264, 16 kHz mono WAV, atomic output."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpu_worker.media.errors import MediaError
from gpu_worker.media.normalize import normalize_audio, normalize_video


def test_normalize_30fps_to_25fps_keeps_audio(clip_30fps: Path, tmp_path: Path, settings) -> None:
    calls: list[tuple[str, float, str]] = []
    out = normalize_video(clip_30fps, tmp_path / "n.mp4", settings, progress=lambda *a: calls.append(a))
    assert out.path == str(tmp_path / "n.mp4") and Path(out.path).is_file()
    v = out.video
    assert (v.fps, v.avg_fps, v.variable_frame_rate, v.frame_count) == (25, 25, False, 25)
    assert (v.codec, v.width, v.height, v.rotation_deg) == ("h264", 64, 48, 0)
    assert out.audio is not None and out.audio.codec == "aac" and out.audio.channels == 2
    fractions = [c[1] for c in calls]
    assert fractions and fractions[-1] == 1.0 and fractions == sorted(fractions)
    assert [p.name for p in tmp_path.iterdir()] == ["n.mp4"]  # no temp files left behind


def test_normalize_vfr_becomes_constant(clip_vfr: Path, tmp_path: Path, settings) -> None:
    v = normalize_video(clip_vfr, tmp_path / "n.mp4", settings, keep_audio=False).video
    assert not v.variable_frame_rate and v.fps == 25
    assert v.frame_count == pytest.approx(50, abs=1)  # 2 s at 25 fps, gaps filled by repeats


def test_normalize_applies_rotation_and_size(rotated, tmp_path: Path, settings) -> None:
    out = normalize_video(rotated(90), tmp_path / "up.mp4", settings)
    v = out.video
    assert (v.width, v.height, v.rotation_deg) == (48, 64, 0)  # pixels turned, no metadata left
    small = normalize_video(rotated(90), tmp_path / "s.mp4", settings, size=(24, 32), keep_audio=False)
    assert (small.video.width, small.video.height) == (24, 32) and small.audio is None
    with pytest.raises(ValueError):
        normalize_video(rotated(90), tmp_path / "odd.mp4", settings, size=(25, 32))


def test_normalize_audio_to_16k_mono(audio_48k: Path, clip_30fps: Path, tmp_path: Path, settings) -> None:
    a = normalize_audio(audio_48k, tmp_path / "a.wav", settings)
    assert (a.codec, a.sample_rate, a.channels) == ("pcm_s16le", 16000, 1)
    assert a.duration_s == pytest.approx(1.0, abs=0.01)
    b = normalize_audio(clip_30fps, tmp_path / "b.wav", settings, rate=22050)  # from a video's AAC track
    assert (b.sample_rate, b.channels) == (22050, 1)


def test_normalize_refuses_over_limit_input(clip_30fps: Path, tmp_path: Path, settings) -> None:
    tight = settings.model_copy(update={"media_max_duration_s": 0.5})
    with pytest.raises(MediaError) as err:
        normalize_video(clip_30fps, tmp_path / "n.mp4", tight)
    assert err.value.code == "media_too_large"
    assert list(tmp_path.iterdir()) == []
