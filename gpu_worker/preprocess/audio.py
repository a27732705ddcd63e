"""Audio features: the Wav2Lip-style log-mel of METHOD.md 1.8 and per-video-frame encoder features.

Shared with the model side (rendering new audio calls the same functions), so every path that turns
audio into features goes through here and trains and renders on identical numbers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import numpy as np

from gpu_worker.preprocess.errors import AudioEncoderError
from gpu_worker.preprocess.hubert import HUBERT_DIR_NAME as HUBERT_DIR_NAME
from gpu_worker.preprocess.hubert import hubert_features
from shared.settings import Settings

log = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
N_FFT = 800
HOP = 200  # 16000 / 200 = 80 mel frames per second
WIN = 800
N_MELS = 80
F_MIN = 55.0
F_MAX = 7600.0
PREEMPHASIS = 0.97
REF_LEVEL_DB = 20.0
MIN_LEVEL_DB = -100.0
MAX_ABS = 4.0
MEL_FPS = SAMPLE_RATE // HOP  # 80
WINDOW_FRAMES = 16  # mel frames per video frame window (200 ms)

# Speech level normalization. The log-mel is in absolute dB, so the same words recorded 18 dB quieter
# arrive as features the model never saw (measured: lip-gap r 0.92 -> 0.63). Every feature path scales
# its track first so that its loud speech (the 95th percentile of 20 ms frame levels: robust to pauses)
# sits at one level. The name is recorded in datasets and models: a model renders new audio with the
# normalization it was trained with (None for models from before it).
LEVEL_NORM = "p95:-16dBFS"
LEVEL_TARGET_DB = -16.0
LEVEL_FRAME, LEVEL_HOP = 320, 160  # 20 ms frames every 10 ms at 16 kHz
LEVEL_PERCENTILE = 95.0
LEVEL_SILENT_DB = -70.0  # a track whose loud frames are quieter than this is left as it is
LEVEL_MAX_GAIN_DB = 40.0
LEVEL_WARN_GAIN_DB = 20.0

ENCODERS = ("whisper", "mel", "ave", "hubert")
# New datasets. Issue 23 asked for "whisper"; measured on the sample subject it lost lip sync against
# "mel" (preview, lip r 0.62 vs 0.91 on the training voice: BENCHMARKS.md "Audio encoders: whisper
# against mel"), so mel stays the default until that gap is closed; "whisper" is one option away.
DEFAULT_ENCODER = "mel"
FEATURE_SHAPES: dict[str, tuple[int, ...]] = {
    "whisper": (2, 512),  # whisper-base; d is the model's (whisper_features.py)
    "mel": (N_MELS, WINDOW_FRAMES),
    "ave": (512,),
    "hubert": (2, 1024),  # HuBERT-large; the hidden size is the checkpoint's
}


def hz_to_mel(f: np.ndarray) -> np.ndarray:
    # Slaney scale: linear below 1 kHz, logarithmic above (the scale Wav2Lip-era librosa used by default).
    f = np.asarray(f, dtype=np.float64)
    mel = f / (200.0 / 3)
    log_part = f >= 1000.0
    return np.where(log_part, 15.0 + np.log(np.maximum(f, 1e-9) / 1000.0) / (np.log(6.4) / 27.0), mel)


def mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    return np.where(m >= 15.0, 1000.0 * np.exp((np.log(6.4) / 27.0) * (m - 15.0)), m * (200.0 / 3))


@lru_cache(maxsize=1)
def mel_basis() -> np.ndarray:
    """Slaney-normalised triangular filterbank, [80, n_fft // 2 + 1]."""
    fft_freqs = np.linspace(0.0, SAMPLE_RATE / 2, N_FFT // 2 + 1)
    mel_f = mel_to_hz(np.linspace(hz_to_mel(F_MIN), hz_to_mel(F_MAX), N_MELS + 2))
    fdiff = np.diff(mel_f)
    ramps = mel_f[:, None] - fft_freqs[None, :]  # [82, 401]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_f[2:] - mel_f[:-2]))[:, None]
    return weights.astype(np.float32)


def _stft_magnitude(y: np.ndarray, block: int = 4096) -> np.ndarray:
    """|STFT| with a centred Hann window, computed in blocks of frames so memory stays bounded. [T, 401]"""
    pad = N_FFT // 2
    mode = "reflect" if len(y) > pad else "constant"
    y = np.pad(y, pad, mode=mode)
    n_frames = 1 + (len(y) - N_FFT) // HOP
    window = np.hanning(WIN + 1)[:-1].astype(np.float32)  # periodic Hann, like scipy.signal.get_window
    out = np.empty((n_frames, N_FFT // 2 + 1), dtype=np.float32)
    frames_view = np.lib.stride_tricks.sliding_window_view(y, N_FFT)[::HOP]  # [T, 800] view, no copy
    for start in range(0, n_frames, block):
        chunk = frames_view[start : start + block] * window  # [b, 800]
        out[start : start + block] = np.abs(np.fft.rfft(chunk, axis=1))
    return out


def log_mel(samples_16k: np.ndarray) -> np.ndarray:
    """Log-mel spectrogram of 16 kHz mono samples, 80 frames per second, values in [-4, 4]. [T, 80]"""
    y = np.asarray(samples_16k, dtype=np.float32).reshape(-1)
    if y.size == 0:
        return np.zeros((0, N_MELS), dtype=np.float32)
    # Pre-emphasis (first-order high-pass) as in Wav2Lip's hparams.
    y = np.concatenate([y[:1], y[1:] - PREEMPHASIS * y[:-1]])
    mag = _stft_magnitude(y)  # [T, 401]
    mel = mag @ mel_basis().T  # [T, 80]
    db = 20.0 * np.log10(np.maximum(1e-5, mel)) - REF_LEVEL_DB
    norm = (2 * MAX_ABS) * ((db - MIN_LEVEL_DB) / -MIN_LEVEL_DB) - MAX_ABS
    return np.clip(norm, -MAX_ABS, MAX_ABS).astype(np.float32)


def log_mel_frames(
    read: Callable[[int, int], np.ndarray], n_samples: int, m0: int, m1: int, block: int = 256
) -> np.ndarray:
    """Frames [m0, m1) of ``log_mel`` of a whole track of ``n_samples`` that is never held whole:
    ``read(start, stop)`` gives its samples [stop - start]. Only the samples those frames see are read;
    the centred STFT's padding (reflect, or zeros for a track of at most 400 samples, as np.pad gives it)
    is rebuilt by index where a frame reaches past either end, so chunks join to exactly ``log_mel``
    (streamed rendering, gpu_worker.render.speech). [m1 - m0, 80]"""
    pad = N_FFT // 2
    pos = np.arange(m0 * HOP, (m1 - 1) * HOP + N_FFT) - pad  # [P] positions in the track
    inside = None
    if n_samples > pad:  # np.pad 'reflect' (no edge repeat) on both sides
        pos = np.abs(pos)
        pos = np.where(pos >= n_samples, 2 * (n_samples - 1) - pos, pos)
    else:
        inside = (pos >= 0) & (pos < n_samples)
        pos = np.clip(pos, 0, n_samples - 1)
    lo, hi = int(pos.min()), int(pos.max()) + 1
    y = np.asarray(read(max(lo - 1, 0), hi), dtype=np.float32)  # one sample more: lo's pre-emphasis
    z = y[1:] - PREEMPHASIS * y[:-1]
    seg = (np.concatenate([y[:1], z]) if lo == 0 else z)[pos - lo]  # [P] padded, pre-emphasised
    if inside is not None:
        seg[~inside] = 0.0
    frames = np.lib.stride_tricks.sliding_window_view(seg, N_FFT)[::HOP]  # [m1 - m0, 800] view
    window = np.hanning(WIN + 1)[:-1].astype(np.float32)  # as _stft_magnitude
    mag = np.empty((m1 - m0, N_FFT // 2 + 1), dtype=np.float32)  # [m1 - m0, 401]
    for b in range(0, m1 - m0, block):  # bounded FFT temporaries
        mag[b : b + block] = np.abs(np.fft.rfft(frames[b : b + block] * window, axis=1))
    mel = mag @ mel_basis().T  # [m1 - m0, 80]
    db = 20.0 * np.log10(np.maximum(1e-5, mel)) - REF_LEVEL_DB
    norm = (2 * MAX_ABS) * ((db - MIN_LEVEL_DB) / -MIN_LEVEL_DB) - MAX_ABS
    return np.clip(norm, -MAX_ABS, MAX_ABS).astype(np.float32)


def speech_level_db(samples_16k: np.ndarray) -> float:
    """Loud-speech level of 16 kHz mono samples in dBFS: the 95th percentile of 20 ms frame RMS levels."""
    y = np.asarray(samples_16k, dtype=np.float32).reshape(-1)
    if y.size < LEVEL_FRAME:
        y = np.pad(y, (0, LEVEL_FRAME - y.size))
    frames = np.lib.stride_tricks.sliding_window_view(y, LEVEL_FRAME)[::LEVEL_HOP]  # [T, 320] view
    power = np.einsum("ij,ij->i", frames, frames, dtype=np.float64) / LEVEL_FRAME  # [T]
    return float(np.percentile(10.0 * np.log10(power + 1e-12), LEVEL_PERCENTILE))


def level_gain_db(samples_16k: np.ndarray, level: str | None = LEVEL_NORM) -> float:
    """The gain in dB that ``normalize_level`` applies: 0 without a level or for a silent track."""
    if level is None:
        return 0.0
    if level != LEVEL_NORM:
        raise AudioEncoderError(
            f"unknown audio level normalization {level!r} (this version knows {LEVEL_NORM!r})"
        )
    current = speech_level_db(samples_16k)
    if current < LEVEL_SILENT_DB:
        return 0.0
    return float(np.clip(LEVEL_TARGET_DB - current, -LEVEL_MAX_GAIN_DB, LEVEL_MAX_GAIN_DB))


def normalize_level(samples_16k: np.ndarray, level: str | None = LEVEL_NORM) -> tuple[np.ndarray, float]:
    """Samples scaled so their loud speech sits at the target level, and the gain applied in dB.

    Values may exceed 1 afterwards: they only feed features, never a file.
    """
    y = np.asarray(samples_16k, dtype=np.float32).reshape(-1)
    gain = level_gain_db(y, level)
    return (y * np.float32(10.0 ** (gain / 20.0)) if gain else y), gain


def level_warnings(gain_db: float) -> list[str]:
    """What a caller should be told about the gain ``normalize_level`` applied (nothing, usually)."""
    if gain_db > LEVEL_WARN_GAIN_DB:
        return [f"the speech is very quiet: raised by {gain_db:.0f} dB before its features were computed"]
    return []


def mel_windows(mel: np.ndarray, n_frames: int, fps: int = 25) -> np.ndarray:
    """Per-video-frame mel windows: frame i takes mel frames [floor(80 i / fps), +16), edge-padded. [N, 80, 16]"""
    mel = np.asarray(mel, dtype=np.float32)
    if mel.ndim != 2 or mel.shape[1] != N_MELS:
        raise ValueError(f"mel must be [T, {N_MELS}], got {mel.shape}")
    if n_frames <= 0:
        return np.zeros((0, N_MELS, WINDOW_FRAMES), dtype=np.float32)
    if len(mel) == 0:
        mel = np.full((1, N_MELS), -MAX_ABS, dtype=np.float32)  # silence
    starts = (np.arange(n_frames) * MEL_FPS) // fps  # [N]
    idx = starts[:, None] + np.arange(WINDOW_FRAMES)[None, :]  # [N, 16]
    idx = np.minimum(idx, len(mel) - 1)  # edge padding past the end
    return np.ascontiguousarray(mel[idx].transpose(0, 2, 1))  # [N, 80, 16]


def frames_for_audio(n_samples: int, fps: int = 25) -> int:
    """Video frames covered by an audio track of n_samples at 16 kHz (one frame per 40 ms, rounded)."""
    return int(round(n_samples * fps / SAMPLE_RATE))


def _load_16k(audio_path: Path) -> np.ndarray:
    from gpu_worker.media.frames import load_audio

    return np.asarray(load_audio(Path(audio_path), rate=SAMPLE_RATE), dtype=np.float32).reshape(-1)


AVE_BATCH = 256  # windows per AVE tower call (the streamed render path uses the same batches)


def ave_features(windows: np.ndarray, encoder, checkpoint: Path) -> np.ndarray:
    """Run the AVE audio tower (owned by the model side, eval mode) over mel windows [N, 80, 16]. [N, 512]"""
    import torch

    out = []
    with torch.no_grad():
        for start in range(0, len(windows), AVE_BATCH):
            batch = torch.from_numpy(windows[start : start + AVE_BATCH]).unsqueeze(1)  # [B, 1, 80, 16]
            out.append(encoder(batch).float().cpu().numpy())
    feats = np.concatenate(out) if out else np.zeros((0, 512), dtype=np.float32)
    if feats.shape[1:] != (512,):
        raise AudioEncoderError(
            f"AVE checkpoint {checkpoint} gives features of shape {feats.shape[1:]}, not (512,)"
        )
    return feats.astype(np.float32)


def encoder_weights_id(encoder: str, settings: Settings, ave_checkpoint: Path | None = None) -> str:
    """A short identity of the weights ``encoder`` would use (paths, sizes, modification times), so a
    cached dataset is redone when the weights change; "" for ``mel`` or where there are none."""
    from gpu_worker.preprocess.hubert import WEIGHT_FILES, hubert_dir

    if encoder == "hubert":
        folder = hubert_dir(settings)
        files = [folder / "config.json"] + [folder / name for name in WEIGHT_FILES]
    elif encoder == "whisper":
        from gpu_worker.preprocess import whisper_features as W
        from shared.model_files.manager import whisper_model_dir

        folder = whisper_model_dir(settings)
        # the normalization and floor are part of the features' identity, like the weights
        files = [folder / "config.json", folder / "model.bin"]
        stamp = f"{W.NORM}:floor{W.LOG_FLOOR:g}"
        parts = [f"{f}:{st.st_size}:{st.st_mtime_ns}" for f in files if f.is_file() and (st := f.stat())]
        return "|".join([*parts, stamp])
    elif encoder == "ave" and ave_checkpoint is not None:
        files = [Path(ave_checkpoint)]
    else:
        return ""
    parts = [f"{f}:{st.st_size}:{st.st_mtime_ns}" for f in files if f.is_file() and (st := f.stat())]
    return "|".join(parts) or str(files[0])


def compute_audio_features(
    audio_path: Path,
    encoder: str,
    settings: Settings,
    *,
    ave_checkpoint: Path | None = None,
    n_frames: int | None = None,
    samples: np.ndarray | None = None,
    hubert_dir: Path | None = None,
    level: str | None = LEVEL_NORM,
) -> tuple[np.ndarray, list[str]]:
    """Per-video-frame features for ``encoder`` from any audio file (decoded to 16 kHz mono).

    ``level``: the speech level normalization applied first (``LEVEL_NORM``; None for none, as models
    trained before it expect).
    ``n_frames`` fixes the count to a video's frame count (training); by default one frame per 40 ms of
    audio (rendering new speech). ``samples`` (16 kHz mono) skips decoding when the caller has them.
    ``hubert_dir`` is the HuBERT checkpoint folder (default: settings.model_dir / HUBERT_DIR_NAME).
    Returns (features [N, *FEATURE_SHAPES[used encoder]] (hubert, whisper: [N, 2, hidden size]), warnings). The
    ``ave`` encoder without a usable checkpoint falls back to ``mel`` with a warning (check
    features.shape to know which was used).
    """
    if encoder not in ENCODERS:
        raise AudioEncoderError(f"unknown audio encoder {encoder!r}; choose one of {', '.join(ENCODERS)}")
    warnings: list[str] = []
    y = _load_16k(audio_path) if samples is None else np.asarray(samples, dtype=np.float32).reshape(-1)
    n = frames_for_audio(len(y)) if n_frames is None else int(n_frames)
    y, gain = normalize_level(y, level)
    warnings += level_warnings(gain)
    if encoder == "hubert":
        return hubert_features(y, n, settings, hubert_dir), warnings
    if encoder == "whisper":
        from gpu_worker.preprocess.whisper_features import whisper_features
        from gpu_worker.speech.whisper import load

        return whisper_features(y, n, load(settings)), warnings
    windows = mel_windows(log_mel(y), n)  # [N, 80, 16]
    tower = load_ave_tower(encoder, ave_checkpoint, warnings)
    if tower is not None:
        return ave_features(windows, tower, ave_checkpoint), warnings
    return windows, warnings


def load_ave_tower(encoder: str, ave_checkpoint: Path | None, warnings: list[str]):
    """The AVE audio tower (eval mode) that the ``ave`` encoder runs, or None: another encoder, or ``ave``
    without a checkpoint (mel features are used, and a warning is appended). A missing file is an error."""
    if encoder != "ave":
        return None
    if ave_checkpoint is None:
        warnings.append("audio encoder 'ave' asked for without a checkpoint: used 'mel' features instead")
        return None
    if not Path(ave_checkpoint).is_file():
        raise AudioEncoderError(f"AVE checkpoint not found: {ave_checkpoint}")
    try:
        from gpu_worker.ave import load_audio_encoder
    except ImportError:
        warnings.append("the AVE audio tower (gpu_worker.ave) is not available: used 'mel' features instead")
        return None
    return load_audio_encoder(Path(ave_checkpoint)).eval()
