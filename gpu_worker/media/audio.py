"""Audio in and out as float32 arrays: ``load_audio`` decodes any audio/video file, ``write_wav`` saves."""

from __future__ import annotations

import os
import uuid
import wave
from pathlib import Path

import numpy as np

from gpu_worker.media import process
from gpu_worker.media.safety import SAFE_INPUT_OPTIONS, ffmpeg_url
from shared.settings import Settings, get_settings


def load_audio(
    path: str | os.PathLike[str], rate: int = 16000, settings: Settings | None = None
) -> np.ndarray:
    """Decode the first audio stream of any accepted file to mono float32 in [-1, 1] at ``rate`` Hz. # [N]

    The whole track is returned at once: speech tracks are short next to the duration limit (an hour at
    16 kHz is 230 MB), and every consumer (audio encoder, lip-sync features) needs it whole anyway.
    """
    import ffmpeg

    from gpu_worker.media.probe import probe

    settings = settings or get_settings()
    if rate <= 0:
        raise ValueError(f"rate must be positive, got {rate}")
    info = probe(path, settings, require_video=False, require_audio=True)
    src = ffmpeg.input(ffmpeg_url(Path(info.path)), **SAFE_INPUT_OPTIONS)["a:0"]
    cmd = process.compile_cmd(src.output("pipe:1", format="f32le", acodec="pcm_f32le", ac=1, ar=rate))
    raw = process.run(cmd, timeout=settings.ffmpeg_timeout_s, shown=Path(info.path).name)
    return np.frombuffer(raw, np.float32).copy()  # [N]


def write_wav(path: str | os.PathLike[str], samples: np.ndarray, rate: int) -> Path:
    """Write float samples in [-1, 1] (``[N]`` mono or ``[N, C]``) as 16-bit PCM WAV, atomically."""
    data = np.asarray(samples, dtype=np.float32)
    if data.ndim == 1:
        data = data[:, None]  # [N, 1]
    if data.ndim != 2 or data.shape[1] < 1:
        raise ValueError(f"samples must be [N] or [N, C], got shape {samples.shape}")
    if rate <= 0:
        raise ValueError(f"rate must be positive, got {rate}")
    pcm = (np.clip(np.nan_to_num(data), -1.0, 1.0) * 32767.0).round().astype("<i2")  # [N, C]
    dst = Path(path)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.partial-{uuid.uuid4().hex[:8]}")
    try:
        with wave.open(str(tmp), "wb") as w:
            w.setnchannels(pcm.shape[1])
            w.setsampwidth(2)
            w.setframerate(int(rate))
            w.writeframes(pcm.tobytes())
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    return dst
