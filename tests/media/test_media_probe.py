"""probe(): the fields every stage relies on, from both backends."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gpu_worker.media.binaries import ffprobe_exe
from gpu_worker.media.info import is_variable_rate
from gpu_worker.media.probe import probe
from gpu_worker.media.probe_ffprobe import parse_ffprobe_json


def test_probe_30fps_clip_with_stereo_audio(backend: str, clip_30fps: Path, settings) -> None:
    info = probe(clip_30fps, settings, backend=backend, require_audio=True)
    assert info.backend == backend
    assert "mp4" in info.format_name.split(",")
    assert info.size_bytes == clip_30fps.stat().st_size
    assert info.duration_s == pytest.approx(1.0, abs=0.05)
    v = info.video
    assert (v.codec, v.width, v.height) == ("h264", 64, 48)
    assert (v.display_width, v.display_height, v.rotation_deg) == (64, 48, 0)
    assert v.fps == pytest.approx(30) and v.avg_fps == pytest.approx(30)
    assert v.frame_count == 30
    assert not v.variable_frame_rate
    a = info.audio
    assert (a.codec, a.sample_rate, a.channels) == ("aac", 44100, 2)
    assert a.duration_s == pytest.approx(1.0, abs=0.05)
    json.dumps(info.to_dict())  # the CLI and API serialise it as is


def test_probe_flags_variable_frame_rate(backend: str, clip_vfr: Path, settings) -> None:
    v = probe(clip_vfr, settings, backend=backend).video
    assert v.variable_frame_rate
    assert v.frame_count == 40  # 60 frames, every third dropped


def test_constant_rate_with_coarse_timestamps_is_not_vfr(backend: str, clip_mkv: Path, settings) -> None:
    info = probe(clip_mkv, settings, backend=backend)
    assert "matroska" in info.format_name
    assert not info.video.variable_frame_rate
    assert info.video.frame_count == 30


@pytest.mark.parametrize(("ccw", "clockwise"), [(90, 270), (-90, 90), (180, 180)])
def test_probe_rotation_from_display_matrix(
    backend: str, rotated, settings, ccw: int, clockwise: int
) -> None:
    v = probe(rotated(ccw), settings, backend=backend).video
    assert v.rotation_deg == clockwise
    assert (v.width, v.height) == (64, 48)  # coded size is unchanged
    expected = (48, 64) if clockwise % 180 else (64, 48)
    assert (v.display_width, v.display_height) == expected


def test_probe_audio_file(backend: str, audio_48k: Path, settings) -> None:
    info = probe(audio_48k, settings, backend=backend, require_video=False, require_audio=True)
    assert info.video is None
    assert (info.audio.codec, info.audio.sample_rate, info.audio.channels) == ("pcm_s16le", 48000, 2)
    assert info.duration_s == pytest.approx(1.0, abs=0.01)


@pytest.mark.skipif(ffprobe_exe() is None, reason="no ffprobe on PATH: the PyAV backend is used")
@pytest.mark.parametrize("fixture", ["clip_30fps", "clip_vfr", "clip_mkv", "audio_48k"])
def test_ffprobe_backend_agrees_with_pyav(request, settings, fixture: str) -> None:
    path = request.getfixturevalue(fixture)
    need_video = fixture != "audio_48k"
    a = probe(path, settings, backend="ffprobe", require_video=need_video).to_dict()
    b = probe(path, settings, backend="pyav", require_video=need_video).to_dict()
    assert a.pop("backend") == "ffprobe" and b.pop("backend") == "pyav"
    assert _close(a, b), (a, b)


def _close(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, float):
        return a == pytest.approx(b, abs=0.05)
    return a == b


def test_parse_ffprobe_json_rotation_vfr_and_cover_art(tmp_path: Path) -> None:
    # Shape of `ffprobe -show_format -show_streams -print_format json` for a phone video (portrait,
    # display matrix -90 deg) with a cover picture stream listed first.
    data = {
        "streams": [
            {"codec_type": "video", "codec_name": "mjpeg", "width": 600, "height": 600,
             "disposition": {"attached_pic": 1}},
            {"codec_type": "video", "codec_name": "hevc", "width": 1920, "height": 1080,
             "r_frame_rate": "30/1", "avg_frame_rate": "2996/100", "nb_frames": "299", "duration": "9.98",
             "disposition": {"attached_pic": 0},
             "side_data_list": [{"side_data_type": "Display Matrix", "rotation": -90}]},
            {"codec_type": "audio", "codec_name": "aac", "sample_rate": "48000", "channels": 2,
             "duration": "10.0"},
        ],
        "format": {"format_name": "mov,mp4,m4a,3gp,3g2,mj2", "duration": "10.0", "size": "123456"},
    }  # fmt: skip
    info = parse_ffprobe_json(data, tmp_path / "phone.mov", timestamps=[])
    v = info.video
    assert (v.codec, v.rotation_deg, v.display_width, v.display_height) == ("hevc", 90, 1080, 1920)
    assert v.fps == 30 and v.avg_fps == pytest.approx(29.96)
    assert not v.variable_frame_rate  # 0.1 % apart: rounding, not dropped frames
    data["streams"][1]["avg_frame_rate"] = "27/1"
    assert parse_ffprobe_json(data, tmp_path / "phone.mov", []).video.variable_frame_rate
    assert v.frame_count == 299
    assert (info.audio.sample_rate, info.audio.channels) == (48000, 2)
    assert info.size_bytes == 123456

    data["streams"][1].pop("side_data_list")
    data["streams"][1]["tags"] = {"rotate": "180"}
    assert parse_ffprobe_json(data, tmp_path / "x.mov", []).video.rotation_deg == 180


def test_is_variable_rate_tolerates_time_base_rounding() -> None:
    ms_30fps = [round(i * 1000 / 30) for i in range(60)]  # 0, 33, 67, 100, ...
    assert not is_variable_rate(ms_30fps, 30.0, 30.0)
    assert not is_variable_rate(list(reversed(ms_30fps)), 30.0, 30.0)  # decode order does not matter
    dropped = ms_30fps[:20] + ms_30fps[21:]
    assert is_variable_rate(dropped, 30.0, 30.0)
    assert is_variable_rate([], 30.0, 25.0)  # nominal and average rate disagree
