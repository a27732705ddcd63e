"""Per-frame drives of the sample subject: mouth opening from the speech, head motion, blinks.

Frame i covers audio [i / fps, (i + 1) / fps); every drive is sampled on that grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Head motion amplitudes (peak): a speaker's natural sway, small enough for a frontal tracker.
YAW_DEG, PITCH_DEG, ROLL_DEG = 4.0, 3.0, 2.0
NOD_DEG = 1.0  # extra pitch that follows the speech envelope (emphasis nods)
SHIFT_FRAME = (0.012, 0.008)  # x, y translation peak, in frame widths
DEPTH_FOCAL = 0.02  # z translation peak, in focal lengths (a 2 % scale change)
SWAY_HZ = (0.07, 0.45)
BLINK_GAP_S = (2.0, 5.0)
BLINK_CLOSE_S, BLINK_HOLD_S, BLINK_OPEN_S = 0.05, 0.02, 0.08  # about 150 ms in all


@dataclass(frozen=True)
class Drives:
    mouth_open: np.ndarray  # [T] 0..1
    euler_deg: np.ndarray  # [T, 3] pitch, yaw, roll (see geometry.py for the convention)
    translation: np.ndarray  # [T, 3] camera-axis pixels at the face's depth (x right, y down, z away)
    blink: np.ndarray  # [T] eyelid closure 0 (open) .. 1 (shut)


def _frames_of(samples: np.ndarray, rate: int, n_frames: int, fps: float) -> list[np.ndarray]:
    edges = np.round(np.arange(n_frames + 1) * rate / fps).astype(int)
    return [samples[edges[i] : edges[i + 1]] for i in range(n_frames)]


def mouth_opening(samples: np.ndarray, rate: int, n_frames: int, fps: float) -> np.ndarray:
    """Mouth opening [T] in 0..1: loudness, shaped per phoneme by how much energy sits in the F1 band.

    Open vowels (a, o) put their energy at 300-1000 Hz; closed sounds (m, s, f, i) put it lower or
    higher, so the ratio of that band to the whole spectrum opens "ah" wider than "ee" or "ss".
    """
    level = np.full(n_frames, -120.0)
    ratio = np.zeros(n_frames)
    for i, chunk in enumerate(_frames_of(samples, rate, n_frames, fps)):
        if chunk.size < 8:
            continue
        rms = float(np.sqrt(np.mean(chunk.astype(np.float64) ** 2)))
        level[i] = 20.0 * np.log10(rms + 1e-7)
        spec = np.abs(np.fft.rfft(chunk * np.hanning(chunk.size))) ** 2
        freq = np.fft.rfftfreq(chunk.size, 1.0 / rate)
        total = spec[(freq >= 80) & (freq < 5000)].sum()
        ratio[i] = spec[(freq >= 300) & (freq < 1000)].sum() / total if total > 0 else 0.0
    ref = np.percentile(level, 95)
    loud = np.clip((level - (ref - 30.0)) / 30.0, 0.0, 1.0)  # 30 dB of range below the loud peaks
    voiced = loud > 0.3
    lo, hi = np.percentile(ratio[voiced], [10, 90]) if voiced.sum() >= 5 else (0.0, 1.0)
    vowel = np.clip((ratio - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
    raw = loud**1.5 * (0.35 + 0.65 * vowel)
    # Lips cannot jump between frames: a short symmetric smoothing (about 60 ms).
    smooth = np.convolve(np.pad(raw, 1, mode="edge"), [0.25, 0.5, 0.25], mode="valid")
    top = np.percentile(smooth, 98)
    return np.clip(smooth / max(top, 1e-6), 0.0, 1.0)


def _sway(t: np.ndarray, peak: float, rng: np.random.Generator) -> np.ndarray:
    """A smooth random signal [T] with peak |value| == peak: three sines of random frequency and phase."""
    freq = rng.uniform(*SWAY_HZ, size=3)
    phase = rng.uniform(0, 2 * np.pi, size=3)
    weight = rng.uniform(0.5, 1.0, size=3)
    sig = (weight[:, None] * np.sin(2 * np.pi * freq[:, None] * t[None] + phase[:, None])).sum(0)
    return sig * (peak / max(float(np.abs(sig).max()), 1e-9))


def head_motion(
    n_frames: int, fps: float, size: int, focal: float, mouth: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Euler angles [T, 3] (pitch, yaw, roll, degrees) and translation [T, 3] (pixels at face depth)."""
    t = (np.arange(n_frames) + 0.5) / fps
    # Emphasis nods: the slow part of the speech envelope (Gaussian, sigma 4 frames) tips the nose down
    # (+pitch, see geometry.py).
    k = np.exp(-0.5 * (np.arange(-12, 13) / 4.0) ** 2)
    slow = np.convolve(np.pad(mouth, 12, mode="edge"), k / k.sum(), mode="valid")
    nod = NOD_DEG * (slow - slow.mean())
    euler = np.stack(
        [_sway(t, PITCH_DEG - NOD_DEG, rng) + nod, _sway(t, YAW_DEG, rng), _sway(t, ROLL_DEG, rng)], axis=1
    )
    translation = np.stack(
        [
            _sway(t, SHIFT_FRAME[0] * size, rng),
            _sway(t, SHIFT_FRAME[1] * size, rng),
            _sway(t, DEPTH_FOCAL * focal, rng),
        ],
        axis=1,
    )
    return euler, translation


def blinks(n_frames: int, fps: float, rng: np.random.Generator) -> np.ndarray:
    """Eyelid closure [T]: blinks at random gaps, each closing fast, holding briefly, opening slower."""
    t = (np.arange(n_frames) + 0.5) / fps
    closure = np.zeros(n_frames)
    start, end = rng.uniform(0.5, 2.0), (t[-1] if n_frames else 0.0)
    while start < end:
        dt = t - start
        rise = np.clip(dt / BLINK_CLOSE_S, 0.0, 1.0)
        fall = np.clip(1.0 - (dt - BLINK_CLOSE_S - BLINK_HOLD_S) / BLINK_OPEN_S, 0.0, 1.0)
        closure = np.maximum(closure, np.where(dt >= 0, np.minimum(rise, fall), 0.0))
        start += rng.uniform(*BLINK_GAP_S)
    return closure


def make_drives(
    samples: np.ndarray, rate: int, n_frames: int, fps: float, size: int, focal: float, seed: int
) -> Drives:
    rng = np.random.default_rng([seed, 2])
    mouth = mouth_opening(samples, rate, n_frames, fps)
    euler, translation = head_motion(n_frames, fps, size, focal, mouth, rng)
    return Drives(
        mouth_open=mouth, euler_deg=euler, translation=translation, blink=blinks(n_frames, fps, rng)
    )
