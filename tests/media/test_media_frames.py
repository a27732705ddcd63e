"""FrameReader / FrameWriter / load_audio / write_wav: round trips, laziness, nothing half-written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gpu_worker.media.errors import MediaError
from gpu_worker.media.frames import FrameReader, FrameWriter, load_audio, write_wav
from gpu_worker.media.probe import probe


def _ramp(i: int, w: int = 64, h: int = 48) -> np.ndarray:
    """Smooth frame whose brightness encodes its index (survives lossy coding). # [H, W, 3]"""
    x = np.linspace(0, 40, w, dtype=np.float32)[None, :, None]
    return np.broadcast_to(np.clip(20 + 12 * i + x, 0, 255), (h, w, 3)).astype(np.uint8)


def test_writer_reader_round_trip(tmp_path: Path, settings) -> None:
    out = tmp_path / "rt.mp4"
    with FrameWriter(out, fps=25, size=(64, 48), settings=settings) as w:
        for i in range(12):
            w.write(_ramp(i))
    info = probe(out, settings)
    assert (info.video.width, info.video.height, info.video.frame_count) == (64, 48, 12)
    assert info.video.fps == pytest.approx(25) and info.audio is None
    with FrameReader(out, settings=settings) as r:
        assert (r.width, r.height, r.fps, r.frame_count_estimate) == (64, 48, 25, 12)
        frames = list(r)
    assert len(frames) == 12
    for i, f in enumerate(frames):
        assert f.shape == (48, 64, 3) and f.dtype == np.uint8
        assert np.abs(f.astype(int) - _ramp(i)).mean() < 2.0  # same order, near-lossless at crf 18


def test_writer_muxes_audio_to_video_length(tmp_path: Path, settings) -> None:
    wav = write_wav(
        tmp_path / "s.wav", 0.3 * np.sin(np.linspace(0, 880 * np.pi, 8000)).astype(np.float32), 16000
    )
    out = tmp_path / "av.mp4"
    with FrameWriter(out, fps=25, size=(64, 48), audio=wav, settings=settings) as w:
        for i in range(25):  # 1 s of video, 0.5 s of audio: padded with silence, not cut
            w.write(_ramp(i % 10))
    info = probe(out, settings, require_audio=True)
    assert info.audio.codec == "aac"
    assert info.video.frame_count == 25
    assert info.audio.duration_s == pytest.approx(1.0, abs=0.03)
    assert info.duration_s == pytest.approx(1.0, abs=0.03)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["av.mp4", "s.wav"]


def test_writer_leaves_nothing_on_exception(tmp_path: Path, settings) -> None:
    out = tmp_path / "fail.mp4"
    with pytest.raises(RuntimeError), FrameWriter(out, fps=25, size=(64, 48), settings=settings) as w:
        w.write(_ramp(0))
        raise RuntimeError("renderer crashed")
    assert list(tmp_path.iterdir()) == []  # neither the target nor a partial file


def test_writer_rejects_bad_frames_and_empty_output(tmp_path: Path, settings) -> None:
    with (
        pytest.raises(ValueError),
        FrameWriter(tmp_path / "a.mp4", fps=25, size=(64, 48), settings=settings) as w,
    ):
        w.write(np.zeros((48, 64, 3), np.float32))
    with pytest.raises(MediaError, match="No frames"), FrameWriter(tmp_path / "b.mp4", fps=25, size=(64, 48)):
        pass
    with pytest.raises(ValueError, match="even"):
        FrameWriter(tmp_path / "c.mp4", fps=25, size=(63, 48), settings=settings)
    assert list(tmp_path.iterdir()) == []


def test_reader_resamples_scales_and_rotates(clip_30fps: Path, rotated, settings) -> None:
    r = FrameReader(clip_30fps, fps=25, size=(32, 24), settings=settings)
    frames = list(r)
    assert len(frames) == r.frame_count_estimate == 25
    assert frames[0].shape == (24, 32, 3)
    upright = list(FrameReader(rotated(90), settings=settings))
    assert len(upright) == 30 and upright[0].shape == (64, 48, 3)  # 64x48 stored, shown 48 wide
    plain = next(iter(FrameReader(clip_30fps, settings=settings))).astype(int)
    # A display matrix of 90 deg counter-clockwise: the viewer sees the stored frame turned that way.
    turned = np.rot90(plain, k=1)
    assert np.abs(upright[0].astype(int) - turned).mean() < 6


def test_reader_streams_lazily_and_stops_ffmpeg(long_clip: Path, settings) -> None:
    # A frame is bigger than a pipe buffer, so ffmpeg can only be a frame or two ahead of us; had the
    # reader slurped the video, ffmpeg would have finished by now.
    with FrameReader(long_clip, settings=settings) as r:
        it = iter(r)
        first = next(it)
        assert first.shape == (240, 320, 3)
        proc = r._proc.proc
        assert proc.poll() is None  # still producing on demand
    assert proc.poll() is not None and r._proc is None  # leaving the block ended ffmpeg


def test_wav_round_trip_and_resampling(tmp_path: Path, audio_48k: Path, settings) -> None:
    t = np.arange(16000) / 16000
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)  # [16000]
    wav = write_wav(tmp_path / "tone.wav", tone, 16000)
    back = load_audio(wav, 16000, settings=settings)
    assert back.dtype == np.float32 and back.shape == tone.shape
    assert np.abs(back - tone).max() < 1e-3  # 16-bit quantisation only
    half = load_audio(wav, 8000, settings=settings)
    assert abs(len(half) - 8000) <= 2
    stereo48 = load_audio(audio_48k, 16000, settings=settings)
    assert abs(len(stereo48) - 16000) <= 2 and np.abs(stereo48).max() > 0.05
    loud = write_wav(tmp_path / "clip.wav", np.array([2.0, -3.0, np.nan], np.float32), 8000)
    assert np.allclose(load_audio(loud, 8000, settings=settings), [1.0, -1.0, 0.0], atol=1e-3)


def test_load_audio_needs_audio(video_only: Path, settings) -> None:
    with pytest.raises(MediaError) as err:
        load_audio(video_only, settings=settings)
    assert err.value.code == "no_audio_stream"
