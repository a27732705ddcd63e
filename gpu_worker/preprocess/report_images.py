"""The dataset quality report's pictures, drawn from a finished dataset folder (docs/DATASET.md) for
the dashboard: sample frames with their landmarks, the masks, the background plate, face coverage
over time. Small files (tens of kB), written once after preprocessing; the dataset stays as it is.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from gpu_worker.preprocess.report_files import REPORT_IMAGES

SAMPLES = 4  # sample frames across the clip
TILE = 192  # px per sample frame (tiny datasets are 64 px: scaled up so people can see them)
JPEG = [cv2.IMWRITE_JPEG_QUALITY, 85]
# parsing labels (docs/DATASET.md) -> BGR colour: head, neck, torso
LABEL_COLOURS = {1: (60, 60, 230), 2: (40, 200, 230), 3: (230, 140, 40)}


def _sample_indices(usable: list[bool], count: int = SAMPLES) -> list[int]:
    good = [i for i, ok in enumerate(usable) if ok] or list(range(len(usable)))
    if not good:
        return []
    picks = np.linspace(0, len(good) - 1, min(count, len(good))).round().astype(int)
    return [good[p] for p in dict.fromkeys(picks.tolist())]


def _tile(image: np.ndarray) -> np.ndarray:
    interp = cv2.INTER_CUBIC if image.shape[0] < TILE else cv2.INTER_AREA
    return cv2.resize(image, (TILE, TILE), interpolation=interp)


def _frame(dataset: Path, index: int) -> np.ndarray:
    image = cv2.imread(str(dataset / "frames" / f"{index:06d}.jpg"), cv2.IMREAD_COLOR)
    if image is None:
        raise FileNotFoundError(f"frame {index} of {dataset} is missing")
    return image


def frames_with_landmarks(dataset: Path, indices: list[int], resolution: int) -> np.ndarray:
    landmarks = np.load(dataset / "landmarks.npy", mmap_mode="r")
    tiles = []
    for i in indices:
        tile = _tile(_frame(dataset, i))
        for x, y in np.asarray(landmarks[i, :, :2]) * (TILE / resolution):
            cv2.circle(tile, (int(x), int(y)), 1, (80, 255, 80), -1, cv2.LINE_AA)
        tiles.append(tile)
    return np.hstack(tiles)


def masks_over_frames(dataset: Path, indices: list[int]) -> np.ndarray:
    """Top row: head / neck / torso labels over each frame; bottom row: the soft inner-face mask."""
    top, bottom = [], []
    for i in indices:
        frame = _tile(_frame(dataset, i))
        labels = cv2.imread(str(dataset / "parsing" / f"{i:06d}.png"), cv2.IMREAD_GRAYSCALE)
        labels = cv2.resize(labels, (TILE, TILE), interpolation=cv2.INTER_NEAREST)
        colour = np.zeros_like(frame)
        for label, bgr in LABEL_COLOURS.items():
            colour[labels == label] = bgr
        top.append(np.where(labels[..., None] > 0, (0.45 * frame + 0.55 * colour).astype(np.uint8), frame))
        face = cv2.imread(str(dataset / "face_mask" / f"{i:06d}.png"), cv2.IMREAD_GRAYSCALE)
        alpha = cv2.resize(face, (TILE, TILE), interpolation=cv2.INTER_LINEAR)[..., None] / 255.0
        tint = np.array([200, 80, 220], np.float32)
        bottom.append((frame * (1 - 0.6 * alpha) + tint * 0.6 * alpha).astype(np.uint8))
    return np.vstack([np.hstack(top), np.hstack(bottom)])


def coverage_plot(usable: list[bool], fps: float, width: int = 720, height: int = 180) -> np.ndarray:
    """A bar per second: the share of that second's frames in which a usable face was found."""
    flags = np.asarray(usable, dtype=np.float32)
    per_s = max(int(round(fps)), 1)
    seconds = max(int(np.ceil(len(flags) / per_s)), 1)
    shares = [float(flags[s * per_s : (s + 1) * per_s].mean()) if len(flags) else 0.0 for s in range(seconds)]
    image = np.full((height, width, 3), 255, np.uint8)
    left, right, top, base = 44, width - 10, 12, height - 28
    cv2.line(image, (left, base), (right, base), (90, 90, 90), 1)
    for share, label in ((1.0, "100%"), (0.5, "50%")):
        y = int(base - share * (base - top))
        cv2.line(image, (left, y), (right, y), (220, 220, 220), 1)
        cv2.putText(image, label, (2, y + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (60, 60, 60), 1, cv2.LINE_AA)
    bar = (right - left) / seconds
    for s, share in enumerate(shares):
        colour = (60, 160, 60) if share >= 0.9 else (30, 150, 230) if share >= 0.5 else (50, 50, 200)
        x0, x1 = int(left + s * bar + 1), int(left + (s + 1) * bar - 1)
        cv2.rectangle(image, (x0, int(base - share * (base - top))), (max(x1, x0), base), colour, -1)
    step = max(1, seconds // 10)
    for s in range(0, seconds + 1, step):
        x = int(left + s * bar)
        cv2.putText(image, f"{s}s", (x - 6, height - 10), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (60, 60, 60), 1)
    return image


def write_report_images(dataset: Path, out_dir: Path) -> list[Path]:
    """Draw every picture of ``REPORT_IMAGES`` from ``dataset`` into ``out_dir``; returns their paths."""
    manifest = json.loads((dataset / "manifest.json").read_text())
    usable = list(manifest["usable"])
    indices = _sample_indices(usable)
    out_dir.mkdir(parents=True, exist_ok=True)
    pictures = {
        "frames.jpg": frames_with_landmarks(dataset, indices, int(manifest["resolution"])),
        "masks.jpg": masks_over_frames(dataset, indices),
        "background.jpg": _tile(cv2.imread(str(dataset / "background.png"), cv2.IMREAD_COLOR)),
        "coverage.png": coverage_plot(usable, float(manifest.get("fps", 25))),
    }
    assert set(pictures) == set(REPORT_IMAGES)
    written = []
    for name, image in pictures.items():
        path = out_dir / name
        params = JPEG if name.endswith(".jpg") else []
        if not cv2.imwrite(str(path), image, params):
            raise OSError(f"could not write {path}")
        written.append(path)
    return written
