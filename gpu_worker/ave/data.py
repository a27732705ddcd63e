"""Sync-training samples from preprocessed datasets: mel windows and mouth crops, held in memory.

Per frame only a 32x64 grayscale mouth crop is kept (2 KiB), so even long datasets fit; frames are
read one at a time from disk.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gpu_worker.ave.towers import CROP_H, CROP_W, LIP_FRAMES
from gpu_worker.model.dataparser import EYE_OUTER_LEFT, EYE_OUTER_RIGHT, LIPS_OUTER
from shared.errors import DatasetError


@dataclass
class SyncClip:
    """One dataset's material: mel [T, 80], crops [N, 32, 64] uint8, usable [N], split ids."""

    name: str
    mel: np.ndarray
    crops: np.ndarray
    usable: np.ndarray
    train_ids: np.ndarray
    val_ids: np.ndarray

    @property
    def n_frames(self) -> int:
        return int(self.crops.shape[0])

    def valid_starts(self, ids: np.ndarray) -> np.ndarray:
        """Frames i whose 5 lip frames i..i+4 exist and are usable."""
        ok = np.zeros(self.n_frames, bool)
        for i in ids:
            j = np.arange(i, i + LIP_FRAMES)
            ok[i] = j[-1] < self.n_frames and bool(self.usable[j].all())
        return np.flatnonzero(ok)

    def mel_window(self, i: int) -> np.ndarray:
        """[80, 16]: mel frames [floor(80 i / 25), +16), edge padded."""
        s = (80 * int(i)) // 25
        idx = np.clip(np.arange(s, s + 16), 0, len(self.mel) - 1)
        return self.mel[idx].T

    def lips(self, i: int) -> np.ndarray:
        return self.crops[i : i + LIP_FRAMES].astype(np.float32) / 255.0  # [5, 32, 64]


def mouth_boxes(landmarks: np.ndarray) -> np.ndarray:
    """Crop boxes [N, 4] (x0, y0, x1, y1), 2:1, centred on the lips, sized by the eye distance
    (not by the mouth, so the box does not change with the mouth opening)."""
    centre = landmarks[:, LIPS_OUTER, :2].mean(1)  # [N, 2]
    iod = np.linalg.norm(landmarks[:, EYE_OUTER_RIGHT, :2] - landmarks[:, EYE_OUTER_LEFT, :2], axis=-1)
    w = np.maximum(iod * 1.1, 4.0)
    h = w * CROP_H / CROP_W
    return np.stack(
        [centre[:, 0] - w / 2, centre[:, 1] - h / 2, centre[:, 0] + w / 2, centre[:, 1] + h / 2], -1
    )


def crop_mouth(image_rgb: np.ndarray, box: np.ndarray) -> np.ndarray:
    """Grayscale mouth crop [32, 64] uint8 from an image [H, W, 3] (uint8 or float 0..1)."""
    import cv2

    img = image_rgb
    if img.dtype != np.uint8:
        img = (np.clip(img, 0, 1) * 255).astype(np.uint8)
    gray = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    x0, y0, x1, y1 = (float(v) for v in box)
    # affine map of the box onto the crop (handles boxes partly outside the frame)
    m = np.array(
        [[CROP_W / (x1 - x0), 0, -x0 * CROP_W / (x1 - x0)], [0, CROP_H / (y1 - y0), -y0 * CROP_H / (y1 - y0)]]
    )
    return cv2.warpAffine(gray, m, (CROP_W, CROP_H), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REPLICATE)


def load_clip(root: str | Path) -> SyncClip:
    import cv2

    root = Path(root)
    try:
        manifest = json.loads((root / "manifest.json").read_text())
        mel = np.load(root / "mel.npy").astype(np.float32)
        landmarks = np.load(root / "landmarks.npy")
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{root} is not a usable dataset for AVE training: {exc}") from exc
    n = int(manifest["frame_count"])
    boxes = mouth_boxes(landmarks)
    crops = np.empty((n, CROP_H, CROP_W), np.uint8)
    for i in range(n):
        bgr = cv2.imread(str(root / "frames" / f"{i:06d}.jpg"))
        if bgr is None:
            raise DatasetError(f"{root}: frame {i} is missing")
        crops[i] = crop_mouth(bgr[..., ::-1], boxes[i])
    split = manifest.get("split", {})
    return SyncClip(
        name=root.name,
        mel=mel,
        crops=crops,
        usable=np.asarray(manifest.get("usable", [True] * n), bool),
        train_ids=np.asarray(split.get("train", range(n)), np.int64),
        val_ids=np.asarray(split.get("val", []), np.int64),
    )
