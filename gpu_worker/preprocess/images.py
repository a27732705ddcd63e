"""Per-frame image files of a dataset: names, and fast encode/decode with OpenCV (RGB in, RGB out)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

JPEG_QUALITY = 95
PNG_COMPRESSION = 1  # fast: training reads these many times, disk is cheap next to CPU time here


def frame_name(index: int, ext: str) -> str:
    return f"{index:06d}.{ext}"


def write_jpg(path: Path, rgb: np.ndarray) -> None:
    if not cv2.imwrite(
        str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]
    ):
        raise OSError(f"could not write {path}")


def write_png(path: Path, image: np.ndarray) -> None:
    """uint8 [H, W] (grey / labels), [H, W, 3] RGB or [H, W, 4] RGBA."""
    if image.ndim == 3:
        code = cv2.COLOR_RGB2BGR if image.shape[2] == 3 else cv2.COLOR_RGBA2BGRA
        image = cv2.cvtColor(image, code)
    if not cv2.imwrite(str(path), image, [cv2.IMWRITE_PNG_COMPRESSION, PNG_COMPRESSION]):
        raise OSError(f"could not write {path}")


def read_rgb(path: Path) -> np.ndarray:
    """[H, W, 3] uint8 RGB."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise OSError(f"could not read {path}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def read_gray(path: Path) -> np.ndarray:
    """[H, W] uint8 (labels or masks as stored)."""
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise OSError(f"could not read {path}")
    return img
