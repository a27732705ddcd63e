"""Streaming speech tracks (gpu_worker.render.speech) against the whole-track functions, with real ffmpeg."""

from __future__ import annotations

import subprocess
import time
import tracemalloc
import wave
from dataclasses import asdict
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from gpu_worker.media.audio import write_wav
from gpu_worker.media.binaries import ffmpeg_exe
from gpu_worker.media.errors import MediaError
from gpu_worker.model.metrics import speech_envelope
from gpu_worker.preprocess import audio as A
from gpu_worker.preprocess.errors import AudioEncoderError
from gpu_worker.render import speech
from gpu_worker.render.npy_rows import NpyRows
from shared.settings import Settings

torch.set_num_threads(1)  # the test machine's cores are shared


def ffmpeg(*args: str) -> None:
    subprocess.run([ffmpeg_exe(), "-v", "error", "-y", "-nostdin", *args], check=True, timeout=60)


def speechy(seconds: float, rate: int = 16000, channels: int = 1, amp: float = 0.3, seed: int = 0):
    """Voiced bursts (180 Hz + harmonics, 4 Hz syllables) with pauses and a little noise. [N] or [N, C]"""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    voice = (
        np.sin(2 * np.pi * 180 * t) + 0.5 * np.sin(2 * np.pi * 540 * t) + 0.25 * np.sin(2 * np.pi * 1260 * t)
    )
    syllables = np.clip(np.sin(2 * np.pi * 4 * t), 0, None) * (np.sin(2 * np.pi * 0.3 * t) > -0.5)
    y = amp * voice / 1.75 * syllables + 0.003 * rng.normal(size=t.size)
    return y if channels == 1 else np.stack([y, 0.8 * y][:channels], axis=1)


@pytest.fixture(scope="module")
def cfg(tmp_path_factory) -> Settings:
    root = tmp_path_factory.mktemp("speech_settings")
    return Settings(
        environment="test", data_dir=root / "data", model_dir=root / "models", model_download=False
    )


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("speech_media")


@pytest.fixture(scope="module")
def track_50s(media, cfg):
    """50 s at 16 kHz mono: three feature chunks at the default chunk size."""
    write_wav(media / "s50.wav", speechy(50.0), 16000)
    return speech.open_speech(media / "s50.wav", media / "work50", cfg)


def whole(track) -> np.ndarray:
    return track.samples(0, track.n_samples)  # [N] float32, the reference's input


def no_partials(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if "partial" in p.name]


@pytest.mark.parametrize("level", [A.LEVEL_NORM, None])
def test_mel_features_equal_the_whole_track_computation(track_50s, cfg, tmp_path, level):
    track = track_50s
    y = whole(track)
    assert track.n_samples == 800_000 and track.duration_s == 50.0
    assert track.wav_path.name == "speech.wav" and no_partials(track.wav_path.parent)
    assert track.speech_level_db == pytest.approx(A.speech_level_db(y), abs=1e-9)
    assert speech.level_gain(track, level) == pytest.approx(A.level_gain_db(y, level), abs=1e-9)
    steps: list[tuple[str, float]] = []
    feats, warnings = speech.speech_features(
        track, "mel", level, cfg, tmp_path / "mel.npy", progress=lambda s, f, m: steps.append((s, f))
    )
    ref, ref_warnings = A.compute_audio_features(None, "mel", cfg, samples=y, level=level)
    assert isinstance(feats, NpyRows) and feats.shape == ref.shape == (1250, 80, 16)
    np.testing.assert_allclose(feats, ref, atol=1e-5)
    assert warnings == ref_warnings and no_partials(tmp_path)
    assert [s for s, _ in steps] == ["features"] * 3 and steps[-1][1] == 1.0


@pytest.mark.parametrize(
    ("seconds", "n_frames"),
    [(3.3, None), (3.3, 120), (3.3, 40), (0.7, None), (0.02, 3), (0.0125, None)],
)
def test_small_chunks_join_exactly(media, cfg, tmp_path, monkeypatch, seconds, n_frames):
    """Chunks of 7 video frames: every join, the reflect padding at both ends, edge padding past the
    end (n_frames beyond the audio), a track shorter than the STFT's padding (zeros, not reflect)."""
    monkeypatch.setattr(speech, "CHUNK_FRAMES", 7)
    write_wav(tmp_path / "in.wav", speechy(seconds, seed=1), 16000)
    track = speech.open_speech(tmp_path / "in.wav", tmp_path / "work", cfg)
    assert track.n_samples == round(seconds * 16000)
    feats, _ = speech.speech_features(track, "mel", A.LEVEL_NORM, cfg, tmp_path / "f.npy", n_frames=n_frames)
    ref, _ = A.compute_audio_features(None, "mel", cfg, samples=whole(track), n_frames=n_frames)
    assert feats.shape == ref.shape
    np.testing.assert_allclose(feats, ref, atol=1e-5)


def test_quiet_speech_is_raised_with_the_same_gain_and_warning(media, cfg, tmp_path):
    write_wav(tmp_path / "quiet.wav", speechy(4.0, amp=0.01), 16000)  # about 30 dB under the target
    steps: list[tuple[str, float]] = []
    track = speech.open_speech(
        tmp_path / "quiet.wav", tmp_path / "work", cfg, progress=lambda s, f, m: steps.append((s, f))
    )
    assert {s for s, _ in steps} == {"decode", "level"} and steps[-1] == ("level", 1.0)
    assert ("decode", 1.0) in steps and all(0 <= f <= 1 for _, f in steps)
    feats, warnings = speech.speech_features(track, "mel", A.LEVEL_NORM, cfg, tmp_path / "f.npy")
    ref, ref_warnings = A.compute_audio_features(None, "mel", cfg, samples=whole(track))
    assert warnings == ref_warnings and "very quiet" in warnings[0]
    np.testing.assert_allclose(feats, ref, atol=1e-5)


@pytest.fixture(scope="module")
def ave_checkpoint(media) -> Path:
    """A small untrained AVE checkpoint in the format gpu_worker.ave.train writes."""
    from gpu_worker.ave.towers import AudioTower, AVEConfig, LipTower
    from gpu_worker.model.checkpoint import save_atomic

    torch.manual_seed(0)
    towers = AVEConfig(width=4)
    audio, lip = AudioTower(towers), LipTower(towers)
    with torch.no_grad():  # BN statistics that are not the identity, so eval mode matters
        for m in audio.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 2.0)
    path = media / "ave.pt"
    save_atomic(
        {
            "kind": "ave",
            "towers": asdict(towers),
            "audio_tower": audio.state_dict(),
            "lip_tower": lip.state_dict(),
        },
        path,
    )
    return path


@pytest.mark.parametrize("chunk", [speech.CHUNK_FRAMES, 100])
def test_ave_features_equal_the_whole_track_computation(
    track_50s, cfg, tmp_path, monkeypatch, ave_checkpoint, chunk
):
    monkeypatch.setattr(speech, "CHUNK_FRAMES", chunk)
    feats, warnings = speech.speech_features(
        track_50s, "ave", A.LEVEL_NORM, cfg, tmp_path / "ave.npy", ave_checkpoint=ave_checkpoint
    )
    ref, ref_warnings = A.compute_audio_features(
        None, "ave", cfg, samples=whole(track_50s), ave_checkpoint=ave_checkpoint
    )
    assert feats.shape == ref.shape == (1250, 512) and warnings == ref_warnings == []
    np.testing.assert_allclose(feats, ref, atol=1e-4)


def test_ave_fallback_and_errors_leave_nothing_behind(track_50s, cfg, tmp_path, monkeypatch):
    feats, warnings = speech.speech_features(track_50s, "ave", None, cfg, tmp_path / "a.npy")
    _, ref_warnings = A.compute_audio_features(None, "ave", cfg, samples=whole(track_50s), level=None)
    assert feats.shape == (1250, 80, 16) and warnings == ref_warnings and "used 'mel'" in warnings[0]
    out = tmp_path / "errors"
    with pytest.raises(AudioEncoderError, match="not found"):
        speech.speech_features(track_50s, "ave", None, cfg, out / "b.npy", ave_checkpoint=tmp_path / "x.pt")
    with pytest.raises(AudioEncoderError, match="unknown audio encoder"):
        speech.speech_features(track_50s, "wav2vec", None, cfg, out / "b.npy")
    with pytest.raises(AudioEncoderError, match="unknown audio level"):
        speech.speech_features(track_50s, "mel", "p50:-20dBFS", cfg, out / "b.npy")
    # A failure in the middle of the chunks removes the partial output.
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("disk full")
        return real(*args, **kwargs)

    real = A.log_mel_frames
    monkeypatch.setattr(A, "log_mel_frames", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        speech.speech_features(track_50s, "mel", None, cfg, out / "b.npy")
    assert not out.exists() or not list(out.iterdir())


def test_hubert_features_equal_the_whole_track_computation(track_50s, cfg, tmp_path):
    """A tiny random HuBERT: 50 s is 2500 feature frames, three chunks with their context."""
    pytest.importorskip("transformers")
    from transformers import HubertConfig, HubertModel

    torch.manual_seed(0)
    config = HubertConfig(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, conv_dim=(8,) * 7,
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
    )  # fmt: skip
    HubertModel(config).save_pretrained(tmp_path / "hubert")
    feats, _ = speech.speech_features(
        track_50s, "hubert", A.LEVEL_NORM, cfg, tmp_path / "h.npy", hubert_dir=tmp_path / "hubert"
    )
    ref, _ = A.compute_audio_features(
        None, "hubert", cfg, samples=whole(track_50s), hubert_dir=tmp_path / "hubert"
    )
    assert feats.shape == ref.shape == (1250, 2, 16)
    np.testing.assert_allclose(feats, ref, atol=1e-3)


@pytest.fixture(scope="module")
def same_signal(media) -> dict[str, Path]:
    """One 6 s 44.1 kHz stereo signal as WAV, MP3, M4A, FLAC, Ogg Vorbis, and the audio of an MP4 video."""
    wav = write_wav(media / "same.wav", speechy(6.0, rate=44100, channels=2, seed=2), 44100)
    out = {"wav": wav}
    # VBR (-q:a 2): LAME at CBR 128k itself takes 0.45 dB off this synthetic signal (ffmpeg's astats
    # says so too), which would leave no margin for the decoding this test is about.
    ffmpeg("-i", str(wav), "-c:a", "libmp3lame", "-q:a", "2", str(media / "same.mp3"))
    ffmpeg("-i", str(wav), "-c:a", "aac", "-b:a", "128k", str(media / "same.m4a"))
    ffmpeg("-i", str(wav), "-c:a", "flac", str(media / "same.flac"))
    ffmpeg("-i", str(wav), "-c:a", "libvorbis", "-q:a", "6", str(media / "same.ogg"))
    ffmpeg(
        "-f", "lavfi", "-i", "testsrc=size=64x48:rate=25:duration=6", "-i", str(wav),
        "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "128k", str(media / "same.mp4"),
    )  # fmt: skip
    out.update({k: media / f"same.{k}" for k in ("mp3", "m4a", "flac", "ogg", "mp4")})
    return out


def test_compressed_and_video_audio_decode_to_the_same_track(same_signal, cfg, tmp_path):
    ref = speech.open_speech(same_signal["wav"], tmp_path / "wav", cfg)
    assert ref.n_samples == 96_000 and ref.info.audio.channels == 2
    for kind in ("mp3", "m4a", "flac", "ogg", "mp4"):
        track = speech.open_speech(same_signal[kind], tmp_path / kind, cfg)
        assert track.info.audio.sample_rate == 44100 and track.info.audio.channels == 2
        assert abs(track.duration_s - 6.0) < 0.03, (kind, track.duration_s)  # encoder delay is trimmed
        assert abs(track.speech_level_db - ref.speech_level_db) < 0.5, kind
        with wave.open(str(track.wav_path)) as w:  # what the render stage muxes: 16 kHz mono s16
            assert (w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()) == (
                1, 2, 16000, track.n_samples,
            )  # fmt: skip
    assert speech.open_speech(same_signal["mp4"], tmp_path / "mp4b", cfg).info.video is not None


def test_peak_and_clipping_are_measured_at_the_native_rate(media, cfg, tmp_path):
    sine = "sine=frequency=440:sample_rate=44100:duration=2"
    # Stereo with the left channel driven 30 dB past full scale (1/8 * 31.6), the right one quiet; and
    # the same shape at the sine's own amplitude (1/8).
    loud_af = "volume=30dB,pan=stereo|c0=c0|c1=0.01*c0"
    ffmpeg("-f", "lavfi", "-i", sine, "-af", loud_af, str(tmp_path / "loud.wav"))
    ffmpeg("-f", "lavfi", "-i", sine, "-af", "pan=stereo|c0=c0|c1=0.5*c0", str(tmp_path / "quiet.wav"))
    loud = speech.open_speech(tmp_path / "loud.wav", tmp_path / "w1", cfg)
    quiet = speech.open_speech(tmp_path / "quiet.wav", tmp_path / "w2", cfg)
    assert loud.info.audio.channels == 2 and loud.peak >= 32767 / 32768
    assert 0.1 < loud.clipped_fraction < 0.5  # most of the left channel's samples, none of the right's
    assert quiet.clipped_fraction == 0.0 and quiet.peak == pytest.approx(0.125, abs=0.005)


def test_envelope_matches_speech_envelope(track_50s):
    track = track_50s
    n = track.n_frames(25)
    assert n == 1250
    np.testing.assert_array_equal(track.envelope(25, 0, n + 5), speech_envelope(whole(track), n + 5))
    part = track.envelope(25, 1240, 1260)  # across the end: zero past it
    np.testing.assert_array_equal(part, speech_envelope(whole(track), 1260)[1240:])
    assert (part[10:] == 0).all() and (part[:10] > 0).any()
    for fps in (29.97, Fraction(30000, 1001)):
        n = track.n_frames(fps)
        assert n == round(50 * float(fps))  # 1498 (1498.5 rounds to even), 1499 for 30000/1001
        env = track.envelope(fps, 0, n)
        assert env.shape == (n,) and env.dtype == np.float64
        j = 1000  # frame j covers samples [ceil(j * 16000 / fps), ceil((j + 1) * 16000 / fps))
        a, b = (int(np.ceil(k * 16000 / float(fps) - 1e-6)) for k in (j, j + 1))
        assert env[j] == pytest.approx(np.sqrt(np.mean(whole(track)[a:b].astype(np.float64) ** 2)), rel=1e-9)
        np.testing.assert_allclose(track.envelope(fps, 100, 200), env[100:200], rtol=1e-12)


@pytest.fixture(scope="module")
def bad_inputs(media) -> dict[str, Path]:
    # Text uploaded as speech. (Named .txt, libavformat picks its "tty" text demuxer, which the media
    # layer refuses as unsafe_media instead: either way nothing is decoded.)
    (media / "notes.mp3").write_text("these are not the words you are looking for\n" * 20)
    (media / "list.m3u8").write_text("#EXTM3U\n#EXT-X-VERSION:3\n#EXTINF:10,\nfile:///etc/passwd\n")
    (media / "empty.wav").write_bytes(b"")
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x48:rate=25:duration=1", "-c:v", "libx264",
           "-pix_fmt", "yuv420p", str(media / "silent_video.mp4"))  # fmt: skip
    ffmpeg("-f", "lavfi", "-i", "sine=duration=2", "-c:a", "aac", str(media / "whole.m4a"))
    data = (media / "whole.m4a").read_bytes()
    (media / "cut.m4a").write_bytes(data[: len(data) // 2])
    return {
        "not_media": media / "notes.mp3",
        "unsafe_media": media / "list.m3u8",
        "empty_file": media / "empty.wav",
        "no_audio_stream": media / "silent_video.mp4",
        "truncated": media / "cut.m4a",
    }


@pytest.mark.parametrize("code", ["not_media", "unsafe_media", "empty_file", "no_audio_stream", "truncated"])
def test_bad_inputs_raise_typed_errors_and_leave_nothing(bad_inputs, cfg, tmp_path, code):
    work = tmp_path / "work"
    with pytest.raises(MediaError) as info:
        speech.open_speech(bad_inputs[code], work, cfg)
    assert info.value.code == code
    assert not work.exists() or not any(work.rglob("*"))


def test_memory_stays_flat_for_a_long_track(media, cfg, tmp_path):
    """20 minutes (77 MB as float32 at 16 kHz): decode, level and mel features in bounded chunks."""
    src = media / "long.wav"
    ffmpeg(
        "-f", "lavfi", "-i", "sine=frequency=220:sample_rate=16000:duration=1200",
        "-f", "lavfi", "-i", "anoisesrc=color=pink:amplitude=0.05:sample_rate=16000:duration=1200",
        "-filter_complex", "[0][1]amix=inputs=2:normalize=0", str(src),
    )  # fmt: skip
    tracemalloc.start()
    try:
        t0 = time.perf_counter()
        track = speech.open_speech(src, tmp_path / "work", cfg)
        t1 = time.perf_counter()
        feats, _ = speech.speech_features(track, "mel", A.LEVEL_NORM, cfg, tmp_path / "mel.npy")
        t2 = time.perf_counter()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    print(f"20 min: open {t1 - t0:.1f} s, mel {t2 - t1:.1f} s, traced peak {peak / 1e6:.1f} MB")
    assert track.n_samples == 1200 * 16000 and feats.shape == (30_000, 80, 16)
    assert peak < 40e6, f"traced peak {peak / 1e6:.1f} MB"
    assert np.isfinite(feats[-5:]).all() and feats[::997].std() > 0
