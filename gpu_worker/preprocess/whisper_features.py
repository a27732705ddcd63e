"""Whisper encoder features (issue 23): a speaker-independent audio front end, two 512-d frames per
video frame ([N, 2, d_model], the ``hubert`` layout, so the audio net takes them unchanged).

Whisper was trained on 680 k hours of many speakers and languages to recognise *what* is said, so its
encoder states carry phonetic content and little of the voice: what the mouth needs. The encoder sees
fixed 30 s windows (3000 log-mel frames at 100 Hz in, 1500 states at 50 Hz out, one per 320 samples,
so two per 40 ms video frame). Longer audio runs in windows that advance by ``KEEP_FRAMES`` (20 s) and
see ``CONTEXT_FRAMES`` (5 s) before the kept part; every kept state thus has at least 5 s of past and
5 s of future audio in its window (except at the track's ends), and windows join without a seam
(tested).

One change from faster-whisper's own log-mel, so that a state depends only on nearby audio and never
on the level of the rest of the track: the floor is fixed (``LOG_FLOOR``: faster-whisper clamps at the
*window's* maximum - 8, so a loud word elsewhere changed every frame).

Normalization (``NORM``), the same fixed transform for any voice, no statistics to store: each state
is standardized over its 512 dimensions, the state the encoder gives for a silent window *at the same
window position* (also standardized) is subtracted, and the difference standardized again. Why: the
raw states are dominated by Whisper's positional embedding: measured on espeak-ng speech, the same
audio at two window positions 10 s apart had cosine similarity 0.43, while different audio at the
same position had 0.47, so a model trained on one 20 s window could learn the lips from the position
(a clock) instead of the sound. After subtracting silence: 0.76 for the same audio, 0.48 for other audio.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

SAMPLE_RATE = 16_000
MEL_HOP = 160  # 100 log-mel frames per second
ENC_HOP = 2 * MEL_HOP  # the encoder's stride-2 convolution: 50 states per second
FRAMES_PER_VIDEO_FRAME = 2  # 50 Hz states, 25 fps model time
WINDOW_FRAMES = 1500  # encoder states per 30 s window (Whisper's fixed input length)
KEEP_FRAMES = 1000  # 20 s kept per window
CONTEXT_FRAMES = 250  # 5 s of context before the kept part (and >= 5 s after it)
# Level-normalized speech (audio.LEVEL_NORM: loud frames at -16 dBFS) peaks near log10 power 1.0 in the
# mel bands (measured: espeak-ng en-us 1.02, en-us+f3 1.00); Whisper keeps 8 decades below its peak.
LOG_FLOOR = -7.0
NORM = "std-minus-silence-std"  # part of the cache key (audio.encoder_weights_id)
D_MODEL = 512  # whisper-base's width, for an empty output only (otherwise the model says)
BATCH = 2  # windows per encoder call (CTranslate2 batches them; bounded memory on the CPU)


def _log_mel(model, y: np.ndarray) -> np.ndarray:
    """Whisper's log-mel of one window of samples with a fixed floor. [n_mels, len(y) // MEL_HOP]"""
    fe = model.feature_extractor
    window = np.hanning(fe.n_fft + 1)[:-1].astype(np.float32)
    spec = fe.stft(y, fe.n_fft, MEL_HOP, window=window, return_complex=True)  # centred, reflect
    power = np.abs(spec[..., :-1].astype(np.complex64)) ** 2  # [201, T]
    log_spec = np.log10(np.maximum(fe.mel_filters @ power, 1e-10))
    return ((np.maximum(log_spec, LOG_FLOOR) + 4.0) / 4.0).astype(np.float32)


def _encode(model, mels: list[np.ndarray]) -> np.ndarray:
    """Encoder states of log-mel windows [n_mels, 3000] each, on the CPU as float32. [B, 1500, d]"""
    import ctranslate2

    batch = ctranslate2.StorageView.from_array(np.ascontiguousarray(np.stack(mels)))
    # to_cpu: on CUDA the states would otherwise stay in GPU memory, which numpy cannot read
    out = model.model.encode(batch, to_cpu=True)
    return np.asarray(out, dtype=np.float32)


def standardize(h: np.ndarray) -> np.ndarray:
    """Each state standardized over its dimensions: [..., d] -> [..., d] float32."""
    h = h - h.mean(-1, keepdims=True)
    return (h / (h.std(-1, keepdims=True) + 1e-5)).astype(np.float32)


_silence: dict[int, np.ndarray] = {}  # id(model) -> its standardized states for a silent window


def silence_states(model) -> np.ndarray:
    """The encoder's standardized states for 30 s of silence (log-mel at the floor). [1500, d]"""
    key = id(model)  # the process keeps its models (gpu_worker.speech.whisper): ids stay valid
    if key not in _silence:
        n_mels = model.feature_extractor.mel_filters.shape[0]
        floor = np.full((n_mels, 2 * WINDOW_FRAMES), (LOG_FLOOR + 4.0) / 4.0, np.float32)
        _silence[key] = standardize(_encode(model, [floor])[0])
    return _silence[key]


def normalize_states(h: np.ndarray, silence: np.ndarray) -> np.ndarray:
    """``NORM`` of states [n, d] at window positions whose silence states are ``silence`` [n, d]."""
    return standardize(standardize(h) - silence)


def whisper_states_from(
    model,
    read: Callable[[int, int], np.ndarray],
    n_out: int,
    make_out: Callable[[int], Any] | None = None,
    progress: Callable[[int], None] | None = None,
) -> Any:
    """Normalized encoder states for ``n_out`` 20 ms frames; ``read(start, stop)`` gives 16 kHz samples
    (level-normalized, zero outside the track). State j covers samples around [j * 320, (j + 1) * 320).
    ``make_out(d)`` gives what the states are written into, in order (default a new [n_out, d] array;
    the render passes an .npy writer, as d is the model's and known only after the first window).
    Returns that. [n_out, d]"""
    make_out = make_out or (lambda d: np.empty((n_out, d), np.float32))
    n_samples = WINDOW_FRAMES * ENC_HOP  # 480,000: 30 s
    jobs: list[tuple[int, int, int]] = []  # (window start, kept start, kept stop) in states
    for a in range(0, n_out, KEEP_FRAMES):
        jobs.append((max(0, a - CONTEXT_FRAMES), a, min(n_out, a + KEEP_FRAMES)))
    out = None
    silence = silence_states(model) if jobs else None
    for i in range(0, len(jobs), BATCH):
        group = jobs[i : i + BATCH]
        mels = [
            _log_mel(model, np.asarray(read(w * ENC_HOP, w * ENC_HOP + n_samples), np.float32))
            for w, _, _ in group
        ]
        states = _encode(model, mels)  # [B, 1500, d]
        if out is None:
            out = make_out(states.shape[-1])
        for (w, a, b), h in zip(group, states, strict=True):
            out[a:b] = normalize_states(h[a - w : b - w], silence[a - w : b - w])
        if progress:
            progress(group[-1][2])
    return out if out is not None else make_out(D_MODEL)  # no frames: nothing to encode


def whisper_features(samples: np.ndarray, n_frames: int, model) -> np.ndarray:
    """Features for ``n_frames`` video frames (25 fps model time) from 16 kHz mono samples, cut or
    zero-padded to the frames. [N, 2, d]"""
    y = np.asarray(samples, np.float32).reshape(-1)

    def read(start: int, stop: int) -> np.ndarray:
        seg = np.zeros(stop - start, np.float32)
        a, b = max(start, 0), min(stop, len(y))
        if b > a:
            seg[a - start : b - start] = y[a:b]
        return seg

    states = whisper_states_from(model, read, FRAMES_PER_VIDEO_FRAME * n_frames)  # [2N, d]
    return states.reshape(n_frames, FRAMES_PER_VIDEO_FRAME, states.shape[-1])
