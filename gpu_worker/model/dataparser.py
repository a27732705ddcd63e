"""Reads a preprocessed dataset folder (the dataset contract) into cameras, conditions and boxes.

Only small per-frame arrays are loaded here (poses, landmarks, features); images stay on disk and
are read by the datamanager as needed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared.errors import DatasetError  # raised here; shared with preprocessing (the writer)

# MediaPipe FaceMesh indices used for boxes and mouth measures.
LIPS_OUTER = [61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 409, 270, 269, 267, 0, 37, 39, 40, 185]
# both eyes' lid contours (MediaPipe face mesh): the box where a blink shows
EYES = [33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246,
        263, 249, 390, 373, 374, 380, 381, 382, 362, 398, 384, 385, 386, 387, 388, 466]  # fmt: skip
LIPS_INNER = [78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308, 415, 310, 311, 312, 13, 82, 81, 80, 191]
LIP_UPPER_INNER, LIP_LOWER_INNER = 13, 14
MOUTH_LEFT, MOUTH_RIGHT = 61, 291
EYE_OUTER_RIGHT, EYE_OUTER_LEFT = 33, 263
NOSE_TIP, CHIN, CHEEK_RIGHT, CHEEK_LEFT = 1, 152, 234, 454
REQUIRED = [
    "manifest.json",
    "transforms_train.json",
    "transforms_val.json",
    "landmarks.npy",
    "audio_features.npy",
]


@dataclass
class DatasetInfo:
    """Everything per frame the model needs, at the working resolution."""

    root: Path
    resolution: int  # working resolution (frames are resized to it)
    source_resolution: int  # the dataset's own resolution
    fps: float
    intrinsics: np.ndarray  # [4] fl_x, fl_y, cx, cy at the working resolution
    aabb: np.ndarray  # [6]
    poses: np.ndarray  # [N, 4, 4] camera-to-world
    audio_features: np.ndarray  # [N, *feature_shape]
    audio_encoder: str
    audio_level: str | None  # the speech level normalization of the features (None: made before it)
    expression: np.ndarray  # [N, 7]
    landmarks: np.ndarray  # [N, 478, 3] at the working resolution
    train_ids: np.ndarray  # [n_train]
    val_ids: np.ndarray  # [n_val]
    face_box: np.ndarray  # [N, 4] x0, y0, x1, y1 (int, working px): head incl. hair margin
    lips_box: np.ndarray  # [N, 4]
    eyes_box: np.ndarray  # [N, 4]: both eyes and their lids
    lower_face_box: np.ndarray  # [N, 4]: where the audio may act

    @property
    def frame_count(self) -> int:
        return int(self.poses.shape[0])

    @property
    def feature_shape(self) -> tuple[int, ...]:
        return tuple(self.audio_features.shape[1:])

    def image_path(self, kind: str, index: int) -> Path:
        ext = "jpg" if kind == "frames" else "png"
        return self.root / kind / f"{index:06d}.{ext}"


def _box(points: np.ndarray, res: int, grow_x: float, up: float, down: float) -> np.ndarray:
    """Boxes [N, 4] around points [N, K, 2], grown by fractions of their size, clipped to the frame."""
    lo, hi = points.min(1), points.max(1)  # [N, 2]
    size = hi - lo
    x0 = lo[:, 0] - grow_x * size[:, 0]
    x1 = hi[:, 0] + grow_x * size[:, 0]
    y0 = lo[:, 1] - up * size[:, 1]
    y1 = hi[:, 1] + down * size[:, 1]
    box = np.stack([x0, y0, x1, y1], -1)
    box = np.stack([np.floor(box[:, 0]), np.floor(box[:, 1]), np.ceil(box[:, 2]), np.ceil(box[:, 3])], -1)
    box = np.clip(box, 0, res).astype(np.int64)
    # never empty: at least 2 px each way
    box[:, 2] = np.maximum(box[:, 2], np.minimum(box[:, 0] + 2, res))
    box[:, 3] = np.maximum(box[:, 3], np.minimum(box[:, 1] + 2, res))
    box[:, 0] = np.minimum(box[:, 0], box[:, 2] - 2)
    box[:, 1] = np.minimum(box[:, 1], box[:, 3] - 2)
    return box


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path.name} in {path.parent} is unreadable: {exc}") from exc


def parse_dataset(root: str | Path, resolution: int | None = None) -> DatasetInfo:
    """Read a dataset folder; ``resolution`` rescales intrinsics and landmarks to a working size."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset folder {root} does not exist")
    missing = [name for name in REQUIRED if not (root / name).exists()]
    if missing:
        raise DatasetError(f"dataset {root} is incomplete: missing {', '.join(missing)}")
    manifest = _read_json(root / "manifest.json")
    if manifest.get("format_version") != 1:
        raise DatasetError(
            f"dataset {root} has format_version {manifest.get('format_version')!r}; expected 1"
        )
    src_res = int(manifest["resolution"])
    res = int(resolution or src_res)
    scale = res / src_res
    n = int(manifest["frame_count"])

    poses = np.zeros((n, 4, 4), np.float32)
    seen = np.zeros(n, bool)
    intr = None
    for name in ("transforms_train.json", "transforms_val.json"):
        tf = _read_json(root / name)
        intr = intr or tf
        for fr in tf["frames"]:
            poses[int(fr["index"])] = np.asarray(fr["transform_matrix"], np.float32)
            seen[int(fr["index"])] = True
    # frames in neither split (unusable) borrow the nearest known pose so every index is renderable
    if not seen.any():
        raise DatasetError(f"dataset {root} has no frames in its transforms files")
    known = np.flatnonzero(seen)
    for i in np.flatnonzero(~seen):
        poses[i] = poses[known[np.abs(known - i).argmin()]]
    intrinsics = np.array([intr["fl_x"], intr["fl_y"], intr["cx"], intr["cy"]], np.float32) * scale

    landmarks = np.load(root / "landmarks.npy").astype(np.float32)  # [N, 478, 3]
    feats = np.load(root / "audio_features.npy").astype(np.float32)  # [N, ...]
    if landmarks.shape[0] != n or feats.shape[0] != n:
        raise DatasetError(
            f"dataset {root}: frame_count {n} but landmarks {landmarks.shape[0]}, audio features {feats.shape[0]}"
        )
    if not np.isfinite(landmarks).all() or not np.isfinite(feats).all():
        raise DatasetError(f"dataset {root}: landmarks or audio features contain NaN/inf")
    expr_path = root / "expression.npy"
    expression = np.load(expr_path).astype(np.float32) if expr_path.exists() else np.zeros((n, 7), np.float32)
    landmarks = landmarks * scale
    pts = landmarks[..., :2]
    split = manifest.get("split", {})
    train_ids = np.asarray(split.get("train", []), np.int64)
    val_ids = np.asarray(split.get("val", []), np.int64)
    if train_ids.size == 0:
        raise DatasetError(f"dataset {root} has no training frames")

    lower = pts[:, [NOSE_TIP, CHIN, CHEEK_RIGHT, CHEEK_LEFT] + LIPS_OUTER]
    lower_box = _box(lower, res, grow_x=0.0, up=0.0, down=0.1)
    # start the lower face at the nose tip, not at the cheek landmarks (which sit higher)
    lower_box[:, 1] = np.clip(np.floor(pts[:, NOSE_TIP, 1]), 0, res - 2).astype(np.int64)
    return DatasetInfo(
        root=root,
        resolution=res,
        source_resolution=src_res,
        fps=float(manifest.get("fps", 25)),
        intrinsics=intrinsics,
        aabb=np.asarray(manifest["aabb"], np.float32),
        poses=poses,
        audio_features=feats,
        audio_encoder=str(manifest.get("audio_encoder", "mel")),
        audio_level=manifest.get("audio_level"),
        expression=expression,
        landmarks=landmarks,
        train_ids=train_ids,
        val_ids=val_ids,
        face_box=_box(pts, res, grow_x=0.25, up=0.6, down=0.1),
        lips_box=_box(pts[:, LIPS_OUTER], res, grow_x=0.2, up=0.3, down=0.3),
        eyes_box=_box(pts[:, EYES], res, grow_x=0.1, up=0.6, down=0.6),
        lower_face_box=lower_box,
    )


# Lip-shape measures (landmark pairs): inner and outer lip gaps across the mouth, and its widths.
LIP_SHAPE_PAIRS = [
    (13, 14), (82, 87), (312, 317), (81, 178), (311, 402),  # inner gaps, centre to corners
    (0, 17), (37, 84), (267, 314),  # outer gaps
    (61, 291), (78, 308),  # outer and inner widths
]  # fmt: skip


def lip_shape(landmarks: np.ndarray) -> np.ndarray:
    """Per-frame lip shape [N, 10]: the LIP_SHAPE_PAIRS distances / inter-ocular distance, from
    landmarks [N, 478, >=2]. Ratios of in-plane distances: nearly unchanged by head pose and scale."""
    a = np.array([i for i, _ in LIP_SHAPE_PAIRS])
    b = np.array([j for _, j in LIP_SHAPE_PAIRS])
    d = np.linalg.norm(landmarks[:, a, :2] - landmarks[:, b, :2], axis=-1)  # [N, 10]
    iod = np.linalg.norm(landmarks[:, EYE_OUTER_RIGHT, :2] - landmarks[:, EYE_OUTER_LEFT, :2], axis=-1)
    return (d / np.maximum(iod, 1e-6)[:, None]).astype(np.float32)


# (upper lid, lower lid, outer corner, inner corner) of each eye
EYE_LIDS = ((159, 145, 33, 133), (386, 374, 263, 362))


def eye_openness(landmarks: np.ndarray) -> np.ndarray:
    """Lid gap / eye width per frame, averaged over both eyes, from landmarks [N, 478, >=2] -> [N]
    (about 0.4 open, under 0.1 shut)."""
    out = []
    for top, bottom, outer, inner in EYE_LIDS:
        gap = np.linalg.norm(landmarks[:, top, :2] - landmarks[:, bottom, :2], axis=-1)
        width = np.linalg.norm(landmarks[:, outer, :2] - landmarks[:, inner, :2], axis=-1)
        out.append(gap / np.maximum(width, 1e-6))
    return np.mean(out, axis=0)


def mouth_opening(landmarks: np.ndarray) -> np.ndarray:
    """Inner-lip gap / inter-ocular distance per frame, from landmarks [N, 478, >=2] -> [N]."""
    gap = np.linalg.norm(landmarks[:, LIP_UPPER_INNER, :2] - landmarks[:, LIP_LOWER_INNER, :2], axis=-1)
    iod = np.linalg.norm(landmarks[:, EYE_OUTER_RIGHT, :2] - landmarks[:, EYE_OUTER_LEFT, :2], axis=-1)
    return gap / np.maximum(iod, 1e-6)
