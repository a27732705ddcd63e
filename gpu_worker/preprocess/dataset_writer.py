"""The dataset's JSON files: split, NeRF transforms, manifest and report (layout in docs/DATASET.md)."""

from __future__ import annotations

import platform
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from gpu_worker.preprocess.step_cache import write_json_atomic

FORMAT_VERSION = 1


def split_frames(usable: np.ndarray) -> dict[str, list[int]]:
    """Validation = the last 1/11 of the usable frames (one contiguous block of them), train = the rest."""
    idx = np.flatnonzero(usable)
    n_val = max(1, int(round(len(idx) / 11))) if len(idx) >= 2 else 0
    return {"train": idx[: len(idx) - n_val].tolist(), "val": idx[len(idx) - n_val :].tolist()}


def write_transforms(path: Path, intrinsics: dict[str, float], c2w: np.ndarray, indices: list[int]) -> None:
    """NeRF-style transforms file: intrinsics plus one camera-to-world 4x4 per listed frame."""
    frames = [{"index": int(i), "transform_matrix": np.round(c2w[i], 7).tolist()} for i in indices]
    write_json_atomic(path, {**intrinsics, "frames": frames})


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("synctalk-platform", "numpy", "scipy", "torch", "mediapipe", "opencv-contrib-python", "av"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out


def build_manifest(**fields: Any) -> dict[str, Any]:
    return {"format_version": FORMAT_VERSION, **fields}
