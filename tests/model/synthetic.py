"""A tiny dataset in the preprocessing contract, drawn analytically (no preprocessing pipeline needed).

The "head" is a textured sphere seen by a slightly orbiting camera; its dark "mouth" opens with a
synthetic speech envelope that also drives the mel features and the audio, so audio carries the
information the lips need (what the AVE and the audio attention must learn).
"""

from __future__ import annotations

import json
import wave
from pathlib import Path

import cv2
import numpy as np

from gpu_worker.model.dataparser import (
    CHEEK_LEFT,
    CHEEK_RIGHT,
    CHIN,
    EYE_OUTER_LEFT,
    EYE_OUTER_RIGHT,
    LIP_LOWER_INNER,
    LIP_UPPER_INNER,
    LIPS_INNER,
    LIPS_OUTER,
    NOSE_TIP,
)

RADIUS = 0.8
CAM_DIST = 3.2
MOUTH_Y = -0.35


def envelope(n_frames: int, seed: int) -> np.ndarray:
    """Smooth speech-like envelope in 0..1 per video frame [N]."""
    rng = np.random.default_rng(seed)
    t = np.arange(n_frames) / 25.0
    env = np.zeros(n_frames)
    for _ in range(4):
        env += np.sin(2 * np.pi * rng.uniform(0.5, 3.0) * t + rng.uniform(0, 2 * np.pi))
    env = (env - env.min()) / (np.ptp(env) + 1e-9)
    return env.astype(np.float32)


def _c2w(yaw: float, pitch: float) -> np.ndarray:
    cy, sy, cp, sp = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch)
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    rot = ry @ rx
    m = np.eye(4)
    m[:3, :3] = rot
    m[:3, 3] = rot @ np.array([0, 0, CAM_DIST])
    return m.astype(np.float32)


def _surface(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    z = np.sqrt(np.clip(RADIUS**2 - x**2 - y**2, 0, None))
    return np.stack([x, y, z], -1)


def _landmarks3d(opening: float) -> np.ndarray:
    """478 canonical points on the sphere's front; the lip points follow the mouth opening."""
    rng = np.random.default_rng(123)
    pts = _surface(rng.uniform(-0.4, 0.4, 478), rng.uniform(-0.4, 0.4, 478))
    ang = np.linspace(0, 2 * np.pi, len(LIPS_OUTER), endpoint=False)
    gap = 0.03 + 0.12 * opening
    pts[LIPS_OUTER] = _surface(0.28 * np.cos(ang), MOUTH_Y + (gap + 0.04) * np.sin(ang))
    pts[LIPS_INNER] = _surface(0.22 * np.cos(ang), MOUTH_Y + gap * np.sin(ang))
    pts[LIP_UPPER_INNER] = _surface(np.array(0.0), np.array(MOUTH_Y + gap))
    pts[LIP_LOWER_INNER] = _surface(np.array(0.0), np.array(MOUTH_Y - gap))
    pts[EYE_OUTER_RIGHT] = _surface(np.array(-0.45), np.array(0.25))
    pts[EYE_OUTER_LEFT] = _surface(np.array(0.45), np.array(0.25))
    pts[NOSE_TIP] = _surface(np.array(0.0), np.array(-0.05))
    pts[CHIN] = _surface(np.array(0.0), np.array(-0.7))
    pts[CHEEK_RIGHT] = _surface(np.array(-0.7), np.array(0.0))
    pts[CHEEK_LEFT] = _surface(np.array(0.7), np.array(0.0))
    return pts


def _render(c2w: np.ndarray, res: int, fl: float, opening: float, plate: np.ndarray, torso: np.ndarray):
    ys, xs = np.mgrid[0:res, 0:res] + 0.5
    d = np.stack([(xs - res / 2) / fl, -(ys - res / 2) / fl, -np.ones_like(xs)], -1) @ c2w[:3, :3].T
    d /= np.linalg.norm(d, axis=-1, keepdims=True)
    o = c2w[:3, 3]
    b = d @ o
    disc = b**2 - (o @ o - RADIUS**2)
    hit = disc > 0
    t = -b - np.sqrt(np.clip(disc, 0, None))
    p = o + d * t[..., None]  # [R, R, 3]
    x, y = p[..., 0], p[..., 1]
    skin = np.stack([0.85 + 0.1 * x, 0.65 + 0.1 * y, 0.55 + 0.05 * np.sin(8 * x)], -1)
    eyes = ((np.abs(np.abs(x) - 0.3) < 0.1) & (np.abs(y - 0.25) < 0.06))[..., None]
    gap = 0.03 + 0.12 * opening
    mouth = ((np.abs(x) < 0.22) & (np.abs(y - MOUTH_Y) < gap))[..., None]
    lips = ((np.abs(x) < 0.28) & (np.abs(y - MOUTH_Y) < gap + 0.04))[..., None]
    col = np.where(lips, np.array([0.7, 0.2, 0.25]), skin)
    col = np.where(mouth, np.array([0.1, 0.02, 0.05]), col)
    col = np.where(eyes, np.array([0.15, 0.1, 0.1]), col)
    torso_a = torso[..., 3:]
    under = torso[..., :3] * torso_a + plate * (1 - torso_a)
    img = np.where(hit[..., None] & (p[..., 2] > -0.2)[..., None], col, under)
    return np.clip(img, 0, 1), hit


def _save(path: Path, img: np.ndarray) -> None:
    arr = (np.clip(img, 0, 1) * 255).round().astype(np.uint8)
    if arr.ndim == 3 and arr.shape[2] == 3:
        arr = arr[..., ::-1]
    elif arr.ndim == 3:
        arr = arr[..., [2, 1, 0, 3]]
    cv2.imwrite(str(path), arr)


def mel_from_envelope(env: np.ndarray, seed: int) -> np.ndarray:
    """Log-mel-like [T, 80] at 80 frames/s whose energy follows the envelope, in [-4, 4]."""
    rng = np.random.default_rng(seed + 7)
    t_mel = int(np.ceil(len(env) * 80 / 25))
    e = np.interp(np.arange(t_mel) / 80.0, np.arange(len(env)) / 25.0, env)
    shape = np.exp(-((np.arange(80) - 20) ** 2) / 300.0)
    mel = -4 + 7 * e[:, None] * (0.4 + 0.6 * shape[None]) + 0.3 * rng.standard_normal((t_mel, 80))
    return np.clip(mel, -4, 4).astype(np.float32)


def mel_windows(mel: np.ndarray, n: int) -> np.ndarray:
    out = np.empty((n, 80, 16), np.float32)
    for i in range(n):
        s = (80 * i) // 25
        idx = np.clip(np.arange(s, s + 16), 0, len(mel) - 1)
        out[i] = mel[idx].T
    return out


def write_wav(path: Path, env: np.ndarray, seed: int) -> None:
    rng = np.random.default_rng(seed + 11)
    sr = 16000
    e = np.interp(np.arange(int(len(env) * sr / 25)) / sr, np.arange(len(env)) / 25.0, env)
    x = (0.5 * e * rng.standard_normal(e.shape)).clip(-1, 1)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes((x * 32767).astype(np.int16).tobytes())


def make_synthetic_dataset(root: Path, n_frames: int = 44, res: int = 48, seed: int = 0) -> Path:
    root = Path(root)
    for sub in ("frames", "gt", "torso", "parsing", "face_mask"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    env = envelope(n_frames, seed)
    fl = res * 1.3
    yy, xx = np.mgrid[0:res, 0:res] / res
    plate = np.stack([0.2 + 0.5 * xx, 0.3 + 0.2 * yy, 0.5 - 0.3 * xx], -1)
    cv2.imwrite(str(root / "background.png"), (plate[..., ::-1] * 255).astype(np.uint8))
    torso = np.zeros((res, res, 4))
    torso[int(res * 0.78) :, int(res * 0.2) : int(res * 0.8)] = [0.3, 0.35, 0.6, 1.0]
    yaw = 0.12 * np.sin(np.arange(n_frames) * 0.3 + rng.uniform(0, 6))
    pitch = 0.06 * np.sin(np.arange(n_frames) * 0.23)
    poses, lms = [], []
    for i in range(n_frames):
        c2w = _c2w(yaw[i], pitch[i])
        img, hit = _render(c2w, res, fl, float(env[i]), plate, torso)
        _save(root / "gt" / f"{i:06d}.png", img)
        _save(root / "frames" / f"{i:06d}.jpg", img)
        _save(root / "torso" / f"{i:06d}.png", torso)
        parsing = np.where(hit, 1, np.where(torso[..., 3] > 0, 3, 0)).astype(np.uint8)
        cv2.imwrite(str(root / "parsing" / f"{i:06d}.png"), parsing)
        cv2.imwrite(str(root / "face_mask" / f"{i:06d}.png"), (hit * 255).astype(np.uint8))
        w2c = np.linalg.inv(c2w)
        p = _landmarks3d(float(env[i])) @ w2c[:3, :3].T + w2c[:3, 3]
        lm = np.stack(
            [fl * p[:, 0] / -p[:, 2] + res / 2, -fl * p[:, 1] / -p[:, 2] + res / 2, p[:, 2] * res], -1
        )
        poses.append(c2w)
        lms.append(lm)
    np.save(root / "landmarks.npy", np.asarray(lms, np.float32))
    bs = np.zeros((n_frames, 52), np.float32)
    bs[:, 25] = env  # jawOpen
    np.save(root / "blendshapes.npy", bs)
    np.save(root / "expression.npy", np.zeros((n_frames, 7), np.float32) + 0.1 * env[:, None])
    mel = mel_from_envelope(env, seed)
    np.save(root / "mel.npy", mel)
    np.save(root / "audio_features.npy", mel_windows(mel, n_frames))
    write_wav(root / "audio.wav", env, seed)
    n_val = max(1, n_frames // 11)
    train, val = list(range(n_frames - n_val)), list(range(n_frames - n_val, n_frames))
    intr = {"fl_x": fl, "fl_y": fl, "cx": res / 2, "cy": res / 2, "w": res, "h": res}
    for name, ids in (("train", train), ("val", val)):
        frames = [{"index": i, "transform_matrix": poses[i].tolist()} for i in ids]
        (root / f"transforms_{name}.json").write_text(json.dumps({**intr, "frames": frames}))
    manifest = {
        "format_version": 1,
        "fps": 25,
        "resolution": res,
        "frame_count": n_frames,
        "usable": [True] * n_frames,
        "split": {"train": train, "val": val},
        "intrinsics": intr,
        "aabb": [-1.0, -1.0, -1.0, 1.0, 1.0, 1.0],
        "audio_encoder": "mel",
        "audio_feature_shape": [80, 16],
        "crop": {"source_width": res, "source_height": res, "x0": 0, "y0": 0, "size": res},
        "source_probe": {},
        "settings": {},
        "versions": {},
        "synthetic_envelope": env.tolist(),
    }
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root
