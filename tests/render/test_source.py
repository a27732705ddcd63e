"""SourceVideo: the subject's source video by slot, forwards, backwards and ping-pong, checked frame by frame
against FrameReader (the ffmpeg CLI's ``fps`` filter) on real files made with lavfi sources."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from gpu_worker.media.binaries import ffmpeg_exe
from gpu_worker.media.errors import MediaError
from gpu_worker.media.frames import FrameReader
from gpu_worker.render.source import SourceVideo, output_rate
from shared.settings import Settings

# PyAV's libswscale and the imageio-ffmpeg CLI convert yuv420p -> rgb24 identically (verified: every
# comparison below is exact with it). A system ffmpeg of another version may round a level or two
# differently; wrong frames still fail, as neighbouring testsrc2 frames differ by over 100 somewhere.
TOLERANCE = 0 if "imageio_ffmpeg" in ffmpeg_exe() else 2
# Default preset keeps B-frames (pts != decode order); -g 10 makes several GOPs in a few seconds.
H264 = ["-c:v", "libx264", "-pix_fmt", "yuv420p", "-g", "10"]


def _ffmpeg(*args: str) -> None:
    subprocess.run([ffmpeg_exe(), "-v", "error", "-y", "-nostdin", *args], check=True, timeout=60)


def _src(size: str, rate: str, seconds: float) -> list[str]:
    return ["-f", "lavfi", "-i", f"testsrc2=size={size}:rate={rate}:duration={seconds}"]


@pytest.fixture(scope="module")
def make(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``make(name, *ffmpeg_args) -> Path``, each file made once per module."""
    root = tmp_path_factory.mktemp("source")

    def build(name: str, *args: str) -> Path:
        path = root / name
        if not path.exists():
            _ffmpeg(*args, str(path))
        return path

    return build


@pytest.fixture(scope="module")
def clips(make) -> dict[str, Path]:
    return {
        "cfr30": make("cfr30.mp4", *_src("96x64", "30", 3), *H264),
        "cfr25": make("cfr25.mp4", *_src("176x144", "25", 3), *H264),
        "ntsc": make("ntsc.mp4", *_src("96x64", "30000/1001", 3), *H264),
        # Matroska: millisecond timestamps (33/34 ms) to be rounded onto the 1001/30000 s grid.
        "ntsc_mkv": make("ntsc.mkv", *_src("176x144", "30000/1001", 3), *H264),
    }


@pytest.fixture(scope="module")
def cfr30(clips) -> Path:
    return clips["cfr30"]


def _reference(path: Path, fps: Fraction, settings: Settings) -> list[np.ndarray]:
    with FrameReader(path, fps=float(fps), settings=settings) as reader:
        return list(reader)  # [n] of [H, W, 3]; the clips are a few hundred kB decoded


def _assert_same(got: np.ndarray, want: np.ndarray, slot: int) -> None:
    assert got.shape == want.shape, f"slot {slot}: shape {got.shape} != {want.shape}"
    diff = int(np.abs(got.astype(np.int16) - want.astype(np.int16)).max())
    assert diff <= TOLERANCE, f"slot {slot}: differs from FrameReader's frame by up to {diff}"


def _ping_pong(start: int, n: int, length: int) -> list[int]:
    """start, start+1, ..., n-1, n-2, ..., 0, 1, ... (the render stage's walk), ``length`` slots."""
    cycle = list(range(n)) + list(range(n - 2, 0, -1))
    return [cycle[(start + i) % len(cycle)] for i in range(length)]


@pytest.mark.parametrize(
    ("name", "fps", "size", "count"),
    [
        ("cfr30", Fraction(30), (96, 64), 90),
        ("cfr25", Fraction(25), (176, 144), 75),
        ("ntsc", Fraction(30000, 1001), (96, 64), 90),
        ("ntsc_mkv", Fraction(30000, 1001), (176, 144), 90),
    ],
)
def test_walks_forward_backward_and_ping_pong_match_frame_reader(clips, settings, name, fps, size, count):
    path = clips[name]
    ref = _reference(path, fps, settings)
    with SourceVideo(path, settings) as sv:
        assert sv.fps == fps and isinstance(sv.fps, Fraction)
        assert (sv.width, sv.height) == size
        assert sv.frame_count == count == len(ref)
        for k in range(count):
            _assert_same(sv.frame(k), ref[k], k)
        # Forward: one seek (to the start, after the table scan), every frame decoded exactly once.
        assert (sv.seeks, sv.decoded) == (1, count)
        for k in reversed(range(count)):
            _assert_same(sv.frame(k), ref[k], k)
        for k in _ping_pong(count // 2, count, 3 * count):
            _assert_same(sv.frame(k), ref[k], k)

    # Backward from the end with a cold cache of 12 frames (GOPs are 10 or 12): each GOP decoded once.
    frame_bytes = size[0] * size[1] * 3
    with SourceVideo(path, settings, cache_bytes=12 * frame_bytes) as sv:
        for k in reversed(range(count)):
            _assert_same(sv.frame(k), ref[k], k)
        assert sv.decoded <= 1.5 * count, (sv.decoded, sv.seeks)
        assert sv.seeks <= count // 10 + 2
        assert sv.cached_bytes <= 12 * frame_bytes


def test_cache_smaller_than_a_gop_stays_correct_and_bounded(cfr30, settings):
    ref = _reference(cfr30, Fraction(30), settings)
    frame_bytes = 96 * 64 * 3
    with SourceVideo(cfr30, settings, cache_bytes=4 * frame_bytes) as sv:
        first = sv.frame(0)
        kept = first.copy()
        assert not first.flags.writeable
        for k in reversed(range(len(ref))):
            _assert_same(sv.frame(k), ref[k], k)
            assert sv.cached_bytes <= 4 * frame_bytes
        # 4-frame windows over 10-frame GOPs: 10 + 6 + 2 frames decoded per GOP.
        assert sv.decoded <= 3 * len(ref), sv.decoded
        for k in _ping_pong(45, len(ref), 200):
            _assert_same(sv.frame(k), ref[k], k)
        # An array handed out earlier is untouched by everything since (evicted, not reused).
        np.testing.assert_array_equal(first, kept)


def test_variable_frame_rate_slots_repeat_frames_like_the_fps_filter(make, settings):
    vfr = make(
        "vfr.mp4", *_src("96x64", "30", 2), "-vf", "select='not(eq(mod(n\\,3)\\,2))'", "-fps_mode", "vfr",
        *H264,
    )  # fmt: skip
    ref = _reference(vfr, Fraction(30), settings)
    with SourceVideo(vfr, settings, fps=Fraction(30)) as sv:
        assert sv.frame_count == len(ref) == 59  # 40 stored frames over 59/30 s
        for k in reversed(range(sv.frame_count)):
            _assert_same(sv.frame(k), ref[k], k)
        assert sv.frame_index(2) == sv.frame_index(1) == 1  # stored frame 2 was dropped: 1 fills its slot
        assert sv.decoded <= 2 * 40
    with SourceVideo(vfr, settings) as sv:  # default: the average rate, 40 frames / (59/30 s)
        assert sv.fps == Fraction(1200, 59)
        ref = _reference(vfr, sv.fps, settings)
        assert sv.frame_count == len(ref) == 40
        for k in range(sv.frame_count):
            _assert_same(sv.frame(k), ref[k], k)


@pytest.mark.parametrize("ccw", [90, 270])
def test_rotated_source_is_upright_like_frame_reader(make, cfr30, settings, ccw):
    path = make(f"rot{ccw}.mp4", "-display_rotation", str(ccw), "-i", str(cfr30), "-c", "copy")
    ref = _reference(path, Fraction(30), settings)
    stored = _reference(cfr30, Fraction(30), settings)
    with SourceVideo(path, settings) as sv:
        assert (sv.width, sv.height) == (64, 96)
        for k in (*range(0, 90, 7), 89, 3, 0):
            got = sv.frame(k)
            _assert_same(got, ref[k], k)
            # Independently of FrameReader: the stored picture turned counter-clockwise by ``ccw``.
            _assert_same(got, np.rot90(stored[k], ccw // 90), k)


@pytest.mark.parametrize("fps", [Fraction(25), Fraction(50), Fraction(12)])
def test_explicit_rate_matches_frame_reader_at_that_rate(cfr30, settings, fps):
    ref = _reference(cfr30, fps, settings)
    with SourceVideo(cfr30, settings, fps=fps) as sv:
        assert sv.fps == fps and sv.frame_count == len(ref)
        for k in range(sv.frame_count):
            _assert_same(sv.frame(k), ref[k], k)
        # Skipping frames (lower rate) is still decoding straight through, not seeking past keyframes.
        assert sv.seeks == 1 and sv.decoded <= 90
        for k in reversed(range(sv.frame_count)):
            _assert_same(sv.frame(k), ref[k], k)


def test_video_starting_after_the_audio_repeats_its_first_frame_like_frame_reader(make, settings):
    """ffmpeg counts from the file's start: 0.3 s of audio before the video are 9 repeats at 30 fps
    (preprocessing's frame indices include them, so slots must too)."""
    path = make(
        "late_video.mp4", *_src("96x64", "30", 2), "-f", "lavfi", "-i", "sine=duration=3",
        "-filter_complex", "[0:v]setpts=PTS+0.3/TB[v]", "-map", "[v]", "-map", "1:a", *H264, "-c:a", "aac",
    )  # fmt: skip
    for fps in (Fraction(30), Fraction(25)):
        ref = _reference(path, fps, settings)
        with SourceVideo(path, settings, fps=fps) as sv:
            assert sv.frame_count == len(ref)
            for k in reversed(range(sv.frame_count)):
                _assert_same(sv.frame(k), ref[k], k)
    with SourceVideo(path, settings) as sv:
        assert sv.frame_count == 69 and sv.frame_index(8) == sv.frame_index(0) == 0 != sv.frame_index(10)


def test_damaged_files_give_frames_or_typed_errors(make, settings, tmp_path):
    """A cut Matroska file reads up to its end like FrameReader; an MP4 with garbage over its middle third
    has its bad packets skipped (as the ffmpeg CLI does): every slot is a frame or a MediaError."""
    mkv = make("whole.mkv", *_src("176x144", "25", 3), *H264)
    data = mkv.read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[: len(data) // 2])
    ref = _reference(cut, Fraction(25), settings)
    with SourceVideo(cut, settings) as sv:
        assert 20 < sv.frame_count == len(ref) < 75
        for k in reversed(range(sv.frame_count)):
            _assert_same(sv.frame(k), ref[k], k)

    mp4 = make("whole.mp4", *_src("176x144", "25", 3), *H264).read_bytes()
    third = len(mp4) // 3
    garbage = np.random.default_rng(0).integers(0, 256, third, dtype=np.uint8).tobytes()
    bad = tmp_path / "garbled.mp4"
    bad.write_bytes(mp4[:third] + garbage + mp4[2 * third :])
    ref = _reference(bad, Fraction(25), settings)
    with SourceVideo(bad, settings) as sv:
        assert sv.frame_count == len(ref) == 75
        for k in [*range(sv.frame_count), *reversed(range(sv.frame_count))]:
            with contextlib.suppress(MediaError):  # a raw av exception would fail the test
                assert sv.frame(k).shape == (144, 176, 3)
        assert sv.decode_errors > 0
        for k in range(15):  # before the damage: FrameReader's frames
            _assert_same(sv.frame(k), ref[k], k)


def test_errors_are_typed(make, cfr30, settings, tmp_path):
    with SourceVideo(cfr30, settings) as sv:
        for bad in (-1, sv.frame_count, 10**9):
            with pytest.raises(IndexError):
                sv.frame(bad)
        sv.frame(np.int64(5))  # numpy integers are indices too
    with pytest.raises(MediaError, match="closed"):
        sv.frame(0)

    audio = make("audio.m4a", "-f", "lavfi", "-i", "sine=duration=1", "-c:a", "aac")
    with pytest.raises(MediaError) as err:
        SourceVideo(audio, settings)
    assert err.value.code == "no_video_stream" and "audio.m4a" in str(err.value)

    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 20)
    with pytest.raises(MediaError) as err:
        SourceVideo(text, settings)
    assert err.value.code == "not_media" and "notes.mp4" in str(err.value)


def test_output_rate_names_the_rate():
    assert output_rate(30.0) == 30 and output_rate(25.0) == 25 and output_rate(29.9996) == 30
    assert output_rate(30000 / 1001) == Fraction(30000, 1001) == output_rate(29.97)
    assert output_rate(24000 / 1001) == Fraction(24000, 1001) and output_rate(59.94) == Fraction(60000, 1001)
    assert output_rate(12.5) == Fraction(25, 2)
    with pytest.raises(ValueError):
        output_rate(0.0)
