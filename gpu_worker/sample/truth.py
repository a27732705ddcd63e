"""truth.json: what the sample subject really did in every frame, and a loader for it.

Field meanings and conventions are in docs/SAMPLE.md; rotations follow gpu_worker/sample/geometry.py.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gpu_worker.sample.errors import SampleError

TRUTH_VERSION = 1

CONVENTIONS = {
    "pixels": "x to the right, y down, origin at the top-left corner of the top-left pixel "
    "(pixel j's centre is at j + 0.5)",
    "camera_axes": "OpenCV: x right, y down, z forward (away from the camera), right-handed",
    "rotation": "head rotation relative to its rest pose in the photo (rest = identity), in camera axes, "
    "about head.pivot: X' = R (X - pivot) + pivot + translation",
    "euler": "R = Rz(roll) @ Ry(yaw) @ Rx(pitch), degrees (scipy: Rotation.from_euler('xyz', "
    "[pitch, yaw, roll], degrees=True)); +pitch tips the nose down (nod), +yaw turns the nose to the image left, "
    "+roll turns the head clockwise in the image",
    "translation": "camera-axis units = pixels at the rest face's depth (which is camera.fx)",
    "to_mediapipe": "MediaPipe's facial transformation matrices use y up, z towards the viewer: "
    "M_t[:3,:3] @ M_rest[:3,:3].T ~= C @ R @ C with C = diag(1, -1, -1)",
    "timing": "frame i shows time [i / fps, (i + 1) / fps) of speech.wav",
    "mouth_open": "0 closed (the photo's rest mouth) .. 1 fully open; the inner lower lip drops by "
    "mouth_open * head.jaw_drop_px at the mouth's centre",
    "blink": "eyelid closure 0 open .. 1 shut",
}


@dataclass(frozen=True)
class Truth:
    fps: float
    size: tuple[int, int]  # width, height
    mouth_open: np.ndarray  # [T]
    blink: np.ndarray  # [T]
    euler_deg: np.ndarray  # [T, 3] pitch, yaw, roll
    rotation: np.ndarray  # [T, 3, 3]
    translation: np.ndarray  # [T, 3]
    lip_gap_px: np.ndarray  # [T] true distance between inner-lip landmarks 13 and 14 in the frame
    camera: dict[str, Any]
    pivot: np.ndarray  # [3] camera coordinates
    speech_rate: int
    raw: dict[str, Any] = field(repr=False)

    @property
    def n_frames(self) -> int:
        return int(self.mouth_open.shape[0])


def write_truth(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.partial-{uuid.uuid4().hex[:8]}")
    try:
        tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_truth(path: str | os.PathLike[str]) -> Truth:
    """Read a sample subject's truth.json into arrays (raises SampleError if it is not one)."""
    p = Path(path)
    try:
        raw = json.loads(p.read_text(encoding="utf-8"))
        if raw.get("version") != TRUTH_VERSION:
            raise SampleError(f"{p.name}: unsupported truth version {raw.get('version')!r}")
        frames = raw["frames"]
        return Truth(
            fps=float(raw["fps"]),
            size=(int(raw["size"][0]), int(raw["size"][1])),
            mouth_open=np.array([f["mouth_open"] for f in frames], dtype=np.float64),
            blink=np.array([f["blink"] for f in frames], dtype=np.float64),
            euler_deg=np.array(
                [[f["euler_deg"]["pitch"], f["euler_deg"]["yaw"], f["euler_deg"]["roll"]] for f in frames],
                dtype=np.float64,
            ).reshape(-1, 3),
            rotation=np.array([f["rotation"] for f in frames], dtype=np.float64).reshape(-1, 3, 3),
            translation=np.array([f["translation"] for f in frames], dtype=np.float64).reshape(-1, 3),
            lip_gap_px=np.array([f["lip_gap_px"] for f in frames], dtype=np.float64),
            camera=dict(raw["camera"]),
            pivot=np.array(raw["head"]["pivot"], dtype=np.float64),
            speech_rate=int(raw["speech"]["sample_rate"]),
            raw=raw,
        )
    except FileNotFoundError:
        raise SampleError(f"no truth file at {p}") from None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, IndexError) as exc:
        raise SampleError(f"{p.name} is not a sample truth file ({type(exc).__name__}: {exc})") from None


def frame_record(
    index: int,
    fps: float,
    mouth: float,
    blink: float,
    euler: np.ndarray,
    rot: np.ndarray,
    trans: np.ndarray,
    lip_gap: float,
) -> dict[str, Any]:
    """One entry of truth.json's ``frames`` (rounded: micro-degrees are far below any tracker's noise)."""
    return {
        "index": index,
        "time": round(index / fps, 6),
        "mouth_open": round(float(mouth), 5),
        "blink": round(float(blink), 5),
        "euler_deg": {k: round(float(v), 5) for k, v in zip(("pitch", "yaw", "roll"), euler, strict=True)},
        "rotation": [[round(float(v), 8) for v in row] for row in rot],
        "translation": [round(float(v), 5) for v in trans],
        "lip_gap_px": round(float(lip_gap), 4),
    }
