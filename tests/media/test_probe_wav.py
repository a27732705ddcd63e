"""The WAV header fast path (probe_head) agrees with the full probe, and never vouches for a file the full
probe would refuse: WAVs from ffmpeg and Python's wave module in every plain format, unusual ones it
must leave to the full probe, and a few hundred corrupted headers."""

from __future__ import annotations

import random
import struct
import wave
from pathlib import Path

import pytest
from conftest import ffmpeg, sine

from gpu_worker.media.errors import MediaError, MediaTooLargeError
from gpu_worker.media.probe import probe, probe_head
from gpu_worker.media.probe_wav import HEAD_BYTES, probe_wav_header


def head_of(path: Path) -> tuple[bytes, int]:
    data = path.read_bytes()
    return data[:HEAD_BYTES], len(data)


def assert_same_verdict(path: Path, settings) -> None:
    fast = probe_head(*head_of(path), path.name, settings)
    assert fast is not None, f"{path.name}: the fast path should take this file"
    full = probe(path, settings, require_video=False, require_audio=True, backend="pyav")
    assert (fast.format_name, fast.size_bytes, fast.video) == (full.format_name, full.size_bytes, None)
    assert fast.duration_s == pytest.approx(full.duration_s, abs=1e-6)
    a, b = fast.audio, full.audio
    assert (a.codec, a.sample_rate, a.channels) == (b.codec, b.sample_rate, b.channels)
    assert a.duration_s == pytest.approx(b.duration_s, abs=1e-6)


@pytest.mark.parametrize(
    ("codec", "rate", "channels"),
    [
        ("pcm_s16le", 16000, 1),
        ("pcm_s16le", 44100, 2),
        ("pcm_u8", 8000, 1),
        ("pcm_s24le", 48000, 2),  # 24-bit: ffmpeg writes WAVE_FORMAT_EXTENSIBLE
        ("pcm_s32le", 22050, 1),
        ("pcm_f32le", 48000, 1),
        ("pcm_f64le", 32000, 2),
        ("pcm_s16le", 48000, 6),  # 5.1: extensible with a channel mask
    ],
)
def test_ffmpeg_wavs_get_the_full_probes_verdict(tmp_path, settings, codec, rate, channels) -> None:
    path = tmp_path / f"{codec}-{rate}-{channels}.wav"
    ffmpeg(*sine(rate=rate, seconds=1.3), "-ac", str(channels), "-c:a", codec, str(path))
    assert_same_verdict(path, settings)


@pytest.mark.parametrize("width", [1, 2, 3, 4])
def test_wave_module_wavs_and_trailing_chunks(tmp_path, settings, width) -> None:
    path = tmp_path / f"w{width}.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(width)
        w.setframerate(11025)
        w.writeframes(bytes(range(256)) * (width * 2 * 40))
    with open(path, "ab") as fh:  # metadata after the samples (odd length: padded), as editors write
        fh.write(b"LIST" + struct.pack("<I", 7) + b"INFOabc\0")
    assert_same_verdict(path, settings)


def wav_bytes(fmt: bytes, data: bytes, *, before_data: bytes = b"", tag: bytes = b"RIFF") -> bytes:
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + before_data
    body += b"data" + struct.pack("<I", len(data)) + data
    return tag + struct.pack("<I", len(body)) + body


def pcm16(channels: int = 1, rate: int = 16000, *, tag: int = 1) -> bytes:
    return struct.pack("<HHIIHH", tag, channels, rate, rate * 2 * channels, 2 * channels, 16)


@pytest.mark.parametrize(
    ("why", "data"),
    [
        ("not a WAV", b"ID3\x04" + bytes(100)),
        ("RF64 (sizes elsewhere)", wav_bytes(pcm16(), bytes(3200), tag=b"RF64")),
        ("compressed (MS ADPCM)", wav_bytes(struct.pack("<HHIIHH", 2, 1, 16000, 8000, 256, 4), bytes(3200))),
        ("no samples", wav_bytes(pcm16(), b"")),
        ("a partial sample frame", wav_bytes(pcm16(2), bytes(3201))),
        ("block size inconsistent", wav_bytes(struct.pack("<HHIIHH", 1, 2, 16000, 64000, 2, 16), bytes(3200))),
        ("no channels", wav_bytes(pcm16(0), bytes(3200))),
        ("absurd sample rate", wav_bytes(pcm16(1, 3), bytes(3200))),
        ("header longer than what was read", wav_bytes(pcm16(), bytes(3200), before_data=b"junk" + struct.pack("<I", HEAD_BYTES) + bytes(HEAD_BYTES))),
        ("chunk size past the end", b"RIFF\0\0\0\0WAVEfmt \xff\xff\xff\xff" + bytes(64)),
    ],
)  # fmt: skip
def test_what_the_fast_path_leaves_to_the_full_probe(why, data) -> None:
    assert probe_wav_header(data[:HEAD_BYTES], len(data), "x.wav") is None, why


def test_a_cut_short_upload_is_left_to_the_full_probe(tmp_path) -> None:
    whole = wav_bytes(pcm16(), bytes(32000))
    assert probe_wav_header(whole, len(whole), "x.wav") is not None
    assert probe_wav_header(whole[:20000], 20000, "x.wav") is None  # the data chunk says more


def test_limits_apply_as_in_the_full_probe(tmp_path, settings) -> None:
    path = tmp_path / "long.wav"
    path.write_bytes(wav_bytes(pcm16(rate=8000), bytes(8000 * 2 * 5)))  # 5 s
    strict = settings.model_copy(update={"media_max_duration_s": 2.0})
    with pytest.raises(MediaTooLargeError) as fast:
        probe_head(*head_of(path), path.name, strict)
    with pytest.raises(MediaTooLargeError) as full:
        probe(path, strict, require_video=False, require_audio=True, backend="pyav")
    assert str(fast.value) == str(full.value)
    small = settings.model_copy(update={"media_max_bytes": 1000})
    with pytest.raises(MediaTooLargeError):
        probe_head(*head_of(path), path.name, small)


def test_corrupted_headers_are_never_vouched_for_when_the_full_probe_refuses(tmp_path, settings) -> None:
    """Random bytes of a real header changed: whatever the fast path still takes, the full probe takes
    too, with the same description."""
    source = tmp_path / "src.wav"
    ffmpeg(*sine(rate=16000, seconds=0.5), "-c:a", "pcm_s16le", str(source))
    original = source.read_bytes()
    header = original.index(b"data") + 8
    rng = random.Random(0)
    taken = 0
    for i in range(300):
        mutated = bytearray(original)
        for _ in range(rng.randint(1, 3)):
            mutated[rng.randrange(header)] = rng.randrange(256)
        path = tmp_path / f"m{i}.wav"
        path.write_bytes(mutated)
        fast = probe_head(*head_of(path), path.name, settings)
        if fast is None:
            continue
        taken += 1
        try:
            full = probe(path, settings, require_video=False, require_audio=True, backend="pyav")
        except MediaError as exc:
            raise AssertionError(f"mutation {i}: the fast path took a file the probe refuses: {exc}") from exc
        assert (fast.audio.codec, fast.audio.sample_rate, fast.audio.channels) == (
            full.audio.codec, full.audio.sample_rate, full.audio.channels,
        ), f"mutation {i}"  # fmt: skip
        assert fast.duration_s == pytest.approx(full.duration_s, abs=1e-3), f"mutation {i}"
    assert 50 < taken < 300  # some mutations hit fields that matter, many hit ones that do not


def test_metadata_that_is_not_utf8_does_not_break_the_full_probe(tmp_path, settings) -> None:
    """A corrupted INFO tag once made PyAV raise UnicodeDecodeError (an unhandled 500 on upload)."""
    info = b"INFO" + b"INAM" + struct.pack("<I", 4) + b"\x84\xff\xfe\x00"
    path = tmp_path / "tagged.wav"
    path.write_bytes(
        wav_bytes(pcm16(), bytes(3200), before_data=b"LIST" + struct.pack("<I", len(info)) + info)
    )
    full = probe(path, settings, require_video=False, require_audio=True, backend="pyav")
    assert full.audio.duration_s == pytest.approx(0.1)
    assert_same_verdict(path, settings)
