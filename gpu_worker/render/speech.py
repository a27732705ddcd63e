"""Speech tracks for the render stage, streamed: any length of speech at flat memory.

``open_speech`` checks a user's file, decodes its first audio stream once (16 kHz mono s16 WAV in the
work folder, and at the same time the native-rate samples through a pipe for peak and clipping) and
measures its speech level. ``speech_features`` turns the WAV into the per-frame features of
``gpu_worker.preprocess.audio.compute_audio_features``, chunk by chunk, into an ``.npy`` file read back
by rows (``npy_rows``: never memory-mapped, so resident memory stays flat however long). Every chunk
reads exactly the samples the whole-track computation would have used, so the numbers equal it.
"""

from __future__ import annotations

import os
import uuid
import wave
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from gpu_worker.media import process
from gpu_worker.media.errors import MediaDecodeError
from gpu_worker.media.info import MediaInfo
from gpu_worker.media.probe import probe
from gpu_worker.media.safety import SAFE_INPUT_OPTIONS, ffmpeg_url
from gpu_worker.preprocess import audio as A
from gpu_worker.preprocess.errors import AudioEncoderError
from gpu_worker.render.npy_rows import NpyRows, NpyWriter
from shared.settings import Settings

Progress = Callable[[str, float, str], None]

SAMPLE_RATE = A.SAMPLE_RATE
SPEECH_WAV = "speech.wav"  # the decoded track's name inside work_dir
CHUNK_FRAMES = 512  # video frames of mel/AVE features per chunk: 20 s, a multiple of the AVE batch (256)
PIPE_BYTES = 1 << 20  # native-rate f32le read from ffmpeg at a time (a multiple of 4)
LEVEL_CHUNK = 2048  # 20 ms level frames per read (20 s)
FULL_SCALE = 32767 / 32768  # a decoded sample this large sat at the 16-bit limit (or beyond)


@dataclass
class SpeechTrack:
    source: Path  # the checked input file (absolute, resolved)
    info: MediaInfo
    wav_path: Path  # 16 kHz mono 16-bit PCM WAV inside work_dir
    n_samples: int
    speech_level_db: float  # p95 of 20 ms frame RMS levels, dBFS, as recorded
    peak: float  # largest |sample| at the native rate, any channel, 0..1
    clipped_fraction: float  # share of native-rate samples at full scale

    @property
    def duration_s(self) -> float:
        return self.n_samples / SAMPLE_RATE

    def n_frames(self, fps: float | Fraction) -> int:
        """Output video frames covering the track (at least one)."""
        return max(1, round(self.duration_s * fps))

    def samples(self, start: int, stop: int) -> np.ndarray:
        """Samples [start, stop) as recorded, float32 in [-1, 1], zero outside the track. [stop - start]"""
        if stop < start:
            raise ValueError(f"stop ({stop}) is before start ({start})")
        out = np.zeros(stop - start, np.float32)
        a, b = max(start, 0), min(stop, self.n_samples)
        if b > a:
            with wave.open(str(self.wav_path), "rb") as w:
                w.setpos(a)
                pcm = np.frombuffer(w.readframes(b - a), "<i2")  # [b - a]
            out[a - start : a - start + len(pcm)] = pcm.astype(np.float32) * np.float32(1 / 32768)
        return out

    def envelope(self, fps: float | Fraction, start: int, stop: int) -> np.ndarray:
        """RMS of the samples over output frames [start, stop), frame j covering [j/fps, (j+1)/fps),
        zero past the end (at 25 fps: model.metrics.speech_envelope). float64 [stop - start]"""
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        if stop <= start:
            return np.zeros(0)
        # Sample k lies in frame j when j/fps <= k/16000 < (j+1)/fps: frame j starts at ceil(j * 16000 / fps),
        # in integers for an exact rate (Fraction(30000, 1001)), else to within float rounding.
        j = np.arange(start, stop + 1, dtype=np.int64)  # [n + 1]
        if isinstance(fps, int | Fraction):
            f = Fraction(fps)
            bounds = -((-j * SAMPLE_RATE * f.denominator) // f.numerator)
        else:
            bounds = np.ceil(j * (SAMPLE_RATE / fps) - 1e-6).astype(np.int64)
        y = self.samples(int(bounds[0]), int(bounds[-1])).astype(np.float64) ** 2
        lengths = np.diff(bounds)  # [n]
        if (lengths == lengths[0]).all():  # a whole number of samples per frame: speech_envelope's sums
            return np.sqrt(y.reshape(len(lengths), lengths[0]).mean(-1))
        return np.sqrt(np.add.reduceat(y, bounds[:-1] - bounds[0]) / lengths)


def open_speech(
    path: str | os.PathLike[str], work_dir: Path, settings: Settings, *, progress: Progress | None = None
) -> SpeechTrack:
    """Check ``path`` (any audio or video file with an audio stream), decode it to ``work_dir/speech.wav``
    and measure it. Raises the typed gpu_worker.media errors; leaves nothing behind when it does."""
    info = probe(path, settings, require_video=False, require_audio=True)
    source = Path(info.path)
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    dst = work_dir / SPEECH_WAV
    tmp = work_dir / f".{SPEECH_WAV}.partial-{uuid.uuid4().hex[:8]}"
    try:
        peak, clipped = _decode(source, info, tmp, settings, progress)
        track = SpeechTrack(source, info, tmp, _wav_samples(tmp, source.name), 0.0, peak, clipped)
        track.speech_level_db = _speech_level(track, progress)
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    track.wav_path = dst
    return track


def _decode(
    source: Path, info: MediaInfo, wav: Path, settings: Settings, progress: Progress | None
) -> tuple[float, float]:
    """One ffmpeg run: the 16 kHz mono WAV to ``wav``, and the native samples (f32le, all channels) to a
    pipe read in bounded pieces. Returns (peak, clipped fraction) of the native samples."""
    import ffmpeg

    src = ffmpeg.input(ffmpeg_url(source), **SAFE_INPUT_OPTIONS)["a:0"]
    to_wav = src.output(ffmpeg_url(wav), format="wav", acodec="pcm_s16le", ac=1, ar=SAMPLE_RATE)
    native = src.output("pipe:1", format="f32le", acodec="pcm_f32le")  # native rate and channels
    cmd = process.compile_cmd(ffmpeg.merge_outputs(to_wav, native))
    a = info.audio
    assert a is not None  # probe(require_audio=True) guarantees it
    expected = max(1.0, a.duration_s * a.sample_rate * a.channels)  # samples, for progress only
    peak, n_clipped, total, shown = 0.0, 0, 0, 0.0
    proc = process.Process(cmd, timeout=settings.ffmpeg_timeout_s, stdin=False, stdout=True)
    try:
        while True:
            with proc.busy():
                buf = proc.proc.stdout.read(PIPE_BYTES)
            if not buf:
                break
            x = np.abs(np.frombuffer(buf, np.float32, count=len(buf) // 4))  # [<= PIPE_BYTES / 4]
            if x.size:
                peak = max(peak, float(x.max()))
                n_clipped += int(np.count_nonzero(x >= FULL_SCALE))
                total += x.size
            if progress and total / expected - shown >= 0.02:
                shown = min(1.0, total / expected)
                progress("decode", shown, f"decoded {total / (a.sample_rate * a.channels):.0f} s")
        proc.finish(source.name, "decode")
        if progress:
            progress("decode", 1.0, f"decoded {total / (a.sample_rate * a.channels):.0f} s")
    finally:
        proc.close()
    # Lossy decoders can overshoot full scale; the track's peak is reported on the 0..1 scale.
    return min(peak, 1.0), (n_clipped / total if total else 0.0)


def _wav_samples(path: Path, shown: str) -> int:
    """Samples in the WAV ffmpeg wrote, checking it is the 16 kHz mono 16-bit PCM that samples() reads."""
    try:
        with wave.open(str(path), "rb") as w:
            if (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, SAMPLE_RATE):
                return w.getnframes()
    except (wave.Error, EOFError) as exc:
        raise MediaDecodeError(f"decoding {shown} gave an unreadable WAV file ({exc}).") from exc
    raise MediaDecodeError(f"decoding {shown} gave a WAV file that is not 16 kHz mono 16-bit.")


def _speech_level(track: SpeechTrack, progress: Progress | None) -> float:
    """preprocess.audio.speech_level_db of the whole track, reading it a chunk of frames at a time."""
    frame, hop = A.LEVEL_FRAME, A.LEVEL_HOP
    n_frames = 1 + (max(track.n_samples, frame) - frame) // hop  # short tracks: one zero-padded frame
    levels = np.empty(n_frames)  # [T] 8 bytes per 10 ms: 2.9 MB for an hour
    for f0 in range(0, n_frames, LEVEL_CHUNK):
        f1 = min(n_frames, f0 + LEVEL_CHUNK)
        y = track.samples(f0 * hop, (f1 - 1) * hop + frame)
        frames = np.lib.stride_tricks.sliding_window_view(y, frame)[::hop]  # [f1 - f0, 320] view
        power = np.einsum("ij,ij->i", frames, frames, dtype=np.float64) / frame
        levels[f0:f1] = 10.0 * np.log10(power + 1e-12)
        if progress:
            progress("level", f1 / n_frames, "measuring the speech level")
    return float(np.percentile(levels, A.LEVEL_PERCENTILE))


def level_gain(track: SpeechTrack, level: str | None) -> float:
    """preprocess.audio.level_gain_db of the whole track, from its measured speech level."""
    if level not in (None, A.LEVEL_NORM):
        raise AudioEncoderError(
            f"unknown audio level normalization {level!r} (this version knows {A.LEVEL_NORM!r})"
        )
    if level is None or track.speech_level_db < A.LEVEL_SILENT_DB:
        return 0.0
    gain = A.LEVEL_TARGET_DB - track.speech_level_db
    return float(np.clip(gain, -A.LEVEL_MAX_GAIN_DB, A.LEVEL_MAX_GAIN_DB))


def speech_features(
    track: SpeechTrack,
    encoder: str,
    level: str | None,
    settings: Settings,
    out_path: Path,
    *,
    ave_checkpoint: Path | None = None,
    hubert_dir: Path | None = None,
    n_frames: int | None = None,
    progress: Progress | None = None,
) -> tuple[np.ndarray, list[str]]:
    """compute_audio_features(samples=<whole track>) written chunk by chunk to ``out_path`` (.npy).

    Returns (the features as read-only rows of the file, ``NpyRows`` [N, *feature shape], warnings); ``ave`` without a usable
    checkpoint or tower falls back to ``mel`` with a warning, as compute_audio_features does.
    """
    if encoder not in A.ENCODERS:
        raise AudioEncoderError(f"unknown audio encoder {encoder!r}; choose one of {', '.join(A.ENCODERS)}")
    n = A.frames_for_audio(track.n_samples) if n_frames is None else int(n_frames)
    gain = level_gain(track, level)
    warnings = A.level_warnings(gain)
    scale = np.float32(10.0 ** (gain / 20.0)) if gain else None

    def read(start: int, stop: int) -> np.ndarray:  # level-normalised samples, as normalize_level gives
        y = track.samples(start, stop)
        return y * scale if scale is not None else y

    tower = A.load_ave_tower(encoder, ave_checkpoint, warnings)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.stem}.partial-{uuid.uuid4().hex[:8]}.npy")
    try:
        if encoder == "hubert":
            _hubert(track, read, n, settings, hubert_dir, tmp, progress)
        elif encoder == "whisper":
            _whisper(read, n, settings, tmp, progress)
        else:
            _mel_or_ave(track.n_samples, read, n, tower, ave_checkpoint, tmp, progress)
        os.replace(tmp, out_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return NpyRows(out_path), warnings


def _mel_or_ave(n_samples, read, n, tower, checkpoint, tmp: Path, progress: Progress | None) -> None:
    """Mel windows [N, 80, 16] (or AVE embeddings [N, 512] with ``tower``) into ``tmp``, CHUNK_FRAMES
    video frames at a time; each chunk computes only the mel frames its windows use."""
    n_mel = 1 + n_samples // A.HOP if n_samples else 0  # log_mel's frame count for the whole track
    shape = (n, 512) if tower is not None else (n, A.N_MELS, A.WINDOW_FRAMES)
    out = NpyWriter(tmp, shape)
    chunk = CHUNK_FRAMES
    for i0 in range(0, n, chunk):
        i1 = min(n, i0 + chunk)
        if n_mel == 0:  # no audio at all: mel_windows' silence
            win = np.full((i1 - i0, A.N_MELS, A.WINDOW_FRAMES), -A.MAX_ABS, np.float32)
        else:
            starts = (np.arange(i0, i1) * A.MEL_FPS) // 25  # [b]
            idx = np.minimum(starts[:, None] + np.arange(A.WINDOW_FRAMES), n_mel - 1)  # [b, 16] edge-padded
            m0 = int(idx.min())
            mel = A.log_mel_frames(read, n_samples, m0, int(idx.max()) + 1)  # [m, 80]
            win = np.ascontiguousarray(mel[idx - m0].transpose(0, 2, 1))  # [b, 80, 16]
        out[i0:i1] = win if tower is None else A.ave_features(win, tower, checkpoint)
        if progress:
            progress("features", i1 / n, f"audio features: frame {i1} of {n}")
    out.close()


def _whisper(read, n: int, settings: Settings, tmp: Path, progress: Progress | None) -> None:
    """Whisper features [N, 2, d] into ``tmp``, one 30 s encoder window at a time (whisper_features.py:
    the same windows as the whole-track computation, so the numbers equal it)."""
    from gpu_worker.preprocess import whisper_features as W
    from gpu_worker.speech.whisper import load

    def report(done: int) -> None:
        if progress:
            progress("features", done / max(1, 2 * n), f"audio features: frame {done // 2} of {n}")

    out = W.whisper_states_from(
        load(settings),
        read,
        W.FRAMES_PER_VIDEO_FRAME * n,
        make_out=lambda d: NpyWriter(tmp, (n, W.FRAMES_PER_VIDEO_FRAME, d)),
        progress=report,
    )  # fmt: skip  (written as 2n rows of states)
    out.close()


def _hubert(track, read, n, settings: Settings, folder, tmp: Path, progress: Progress | None) -> None:
    """HuBERT features [N, 2, hidden] into ``tmp``: hubert.py's chunks, each normalised with the
    whole track's mean and deviation (streamed first)."""
    import math

    from gpu_worker.preprocess import hubert as H

    model = H.check_frame_hop(H.load_hubert(settings, folder))
    sums, step = np.zeros(2), CHUNK_FRAMES * 640  # the whole track's sum and sum of squares
    for s in range(0, track.n_samples, step):
        y = read(s, min(track.n_samples, s + step)).astype(np.float64)
        sums += (y.sum(), (y * y).sum())
    m, sq = sums / max(track.n_samples, 1)
    mean, std = np.float32(m), np.float32(math.sqrt(max(sq - m * m, 0.0)))

    def normalised(start: int, stop: int) -> np.ndarray:
        y = (read(start, stop) - mean) / (std + 1e-7)  # as hidden_states' utterance normalisation
        y[max(0, track.n_samples - start) :] = 0.0  # its zero padding comes after normalising
        return y

    out = NpyWriter(tmp, (n, 2, model.config.hidden_size))  # written as 2n rows of hidden states
    H.hidden_states_from(model, normalised, 2 * n, out=out)
    out.close()
    if progress:
        progress("features", 1.0, f"audio features: {n} frames")
