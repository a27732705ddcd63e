"""Every kind of bad input is refused with its own error code, before anything is decoded."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gpu_worker.media.errors import MediaError
from gpu_worker.media.frames import FrameReader
from gpu_worker.media.normalize import normalize_audio, normalize_video
from gpu_worker.media.probe import probe


def _code(path, settings, backend: str = "pyav", **kw) -> str:
    with pytest.raises(MediaError) as err:
        probe(path, settings, backend=backend, **kw)
    assert str(err.value)  # a message for the user, not an empty exception
    return err.value.code


def test_empty_file(tmp_path: Path, settings) -> None:
    (tmp_path / "empty.mp4").touch()
    assert _code(tmp_path / "empty.mp4", settings) == "empty_file"


def test_text_file(backend: str, tmp_path: Path, settings) -> None:
    (tmp_path / "notes.mp4").write_text("this is not a video\n" * 50)
    assert _code(tmp_path / "notes.mp4", settings, backend) == "not_media"


def test_random_bytes(backend: str, tmp_path: Path, settings) -> None:
    (tmp_path / "noise.mp4").write_bytes(os.urandom(64 * 1024))
    assert _code(tmp_path / "noise.mp4", settings, backend) == "not_media"


@pytest.mark.parametrize("fixture", ["clip_30fps", "clip_faststart"])
def test_truncated_mp4(backend: str, request, tmp_path: Path, settings, fixture: str) -> None:
    # Index at the end (ffmpeg's default) loses it; index first keeps it but points past the end.
    data = request.getfixturevalue(fixture).read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    assert _code(cut, settings, backend) == "truncated"


def test_audio_only_when_video_needed(backend: str, audio_only_m4a: Path, settings) -> None:
    assert _code(audio_only_m4a, settings, backend) == "no_video_stream"
    assert probe(audio_only_m4a, settings, backend=backend, require_video=False).audio is not None


def test_video_only_when_audio_required(backend: str, video_only: Path, settings) -> None:
    assert _code(video_only, settings, backend, require_audio=True) == "no_audio_stream"
    with pytest.raises(MediaError, match="no audio") as err:
        normalize_audio(video_only, video_only.with_suffix(".wav"), settings)
    assert err.value.code == "no_audio_stream"


@pytest.mark.parametrize(
    "limit",
    [{"media_max_width": 32}, {"media_max_height": 40}, {"media_max_duration_s": 0.5},
     {"media_max_frames": 10}, {"media_max_bytes": 1000}],
)  # fmt: skip
def test_over_the_limits(backend: str, clip_30fps: Path, settings, limit: dict) -> None:
    tight = settings.model_copy(update=limit)
    assert _code(clip_30fps, tight, backend) == "media_too_large"
    assert probe(clip_30fps, settings, backend=backend).video is not None  # the defaults accept it


def test_hls_playlist_pointing_at_a_local_file(clip_30fps: Path, tmp_path: Path, settings) -> None:
    m3u8 = tmp_path / "list.m3u8"
    m3u8.write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1.0,\nfile://{clip_30fps}\n#EXT-X-ENDLIST\n")
    assert _code(m3u8, settings) == "unsafe_media"


def test_ffconcat_pointing_at_a_local_file(clip_30fps: Path, tmp_path: Path, settings) -> None:
    concat = tmp_path / "list.mp4"  # a harmless-looking name does not help
    concat.write_text(f"\ufeffffconcat version 1.0\nfile '{clip_30fps}'\n")
    assert _code(concat, settings) == "unsafe_media"


def test_demuxer_whitelist_catches_what_sniffing_misses(backend: str, tmp_path: Path, settings) -> None:
    # An HLS playlist whose marker is pushed past the sniffed bytes: ffmpeg's own probe still finds the
    # format, and the demuxer whitelist refuses it.
    from gpu_worker.media.safety import check_format_name

    with pytest.raises(MediaError) as err:
        check_format_name("hls", "x.m3u8")
    assert err.value.code == "unsafe_media"
    sdp = tmp_path / "stream.sdp"  # an SDP file would make ffmpeg open RTP sockets
    sdp.write_text("v=0\no=- 0 0 IN IP4 127.0.0.1\ns=x\nc=IN IP4 127.0.0.1\nt=0 0\nm=video 5004 RTP/AVP 96\n")
    assert _code(sdp, settings, backend) in ("unsafe_media", "not_media")


def test_directory(tmp_path: Path, settings) -> None:
    assert _code(tmp_path, settings) == "not_a_file"


def test_symlink_to_dev_zero(tmp_path: Path, settings) -> None:
    link = tmp_path / "video.mp4"
    link.symlink_to("/dev/zero")
    assert _code(link, settings) == "not_a_file"


def test_fifo(tmp_path: Path, settings) -> None:
    fifo = tmp_path / "pipe.mp4"
    os.mkfifo(fifo)
    assert _code(fifo, settings) == "not_a_file"  # and it must not block trying to read it


def test_nonexistent_path(tmp_path: Path, settings) -> None:
    assert _code(tmp_path / "missing.mp4", settings) == "not_a_file"


@pytest.mark.parametrize("url", ["http://example.com/a.mp4", "concat:a.mp4|b.mp4", "subfile:/etc/passwd"])
def test_urls_and_protocols(url: str, settings) -> None:
    assert _code(url, settings) == "unsafe_media"


def test_refused_input_leaves_no_output(tmp_path: Path, settings) -> None:
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(os.urandom(4096))
    with pytest.raises(MediaError):
        normalize_video(bad, tmp_path / "out" / "norm.mp4", settings)
    with pytest.raises(MediaError):
        FrameReader(bad, settings=settings)
    assert not (tmp_path / "out").exists()
