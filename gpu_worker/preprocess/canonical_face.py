"""The canonical 3D face that ships inside ``face_landmarker.task`` (468 vertices in cm, triangles).

MediaPipe's geometry pipeline metadata is a small protobuf; we decode its wire format directly (no
generated classes ship with the Tasks-only mediapipe) to get the mean face shape that coarse pose
estimation solves against, and the per-landmark weights MediaPipe itself uses for its rigid fit.
"""

from __future__ import annotations

import struct
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

_METADATA_ENTRY = "geometry_pipeline_metadata_landmarks.binarypb"


@dataclass(frozen=True)
class CanonicalFace:
    vertices: (
        np.ndarray
    )  # [468, 3] float64, cm; +x to the face's left (image right), +y up, +z out of the face
    triangles: np.ndarray  # [F, 3] int32
    procrustes_ids: np.ndarray  # [K] landmark ids MediaPipe uses for its rigid fit
    procrustes_weights: np.ndarray  # [K]


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[i]
        i += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return result, i


def _fields(buf: bytes) -> list[tuple[int, int | float | bytes]]:
    """Decode one protobuf message level into (field number, value) pairs."""
    out: list[tuple[int, int | float | bytes]] = []
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 2:
            length, i = _varint(buf, i)
            value, i = buf[i : i + length], i + length
        elif wire == 5:
            value, i = struct.unpack("<f", buf[i : i + 4])[0], i + 4
        elif wire == 1:
            value, i = buf[i : i + 8], i + 8
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        out.append((field, value))
    return out


def _floats(values: list) -> list[float]:
    out: list[float] = []
    for v in values:  # a repeated float may be packed (bytes) or not
        out.extend(np.frombuffer(v, "<f4").tolist() if isinstance(v, bytes) else [v])
    return out


def _uints(values: list) -> list[int]:
    out: list[int] = []
    for v in values:
        if isinstance(v, bytes):
            i = 0
            while i < len(v):
                x, i = _varint(v, i)
                out.append(x)
        else:
            out.append(int(v))
    return out


def parse_geometry_metadata(buf: bytes) -> CanonicalFace:
    """GeometryPipelineMetadata: 1 = canonical_mesh (Mesh3d), 2 = procrustes_landmark_basis (repeated)."""
    mesh_buf = next(v for f, v in _fields(buf) if f == 1)
    mesh = _fields(mesh_buf)  # Mesh3d: 3 = vertex_buffer (x y z u v per vertex), 4 = index_buffer
    vb = np.asarray(_floats([v for f, v in mesh if f == 3]), dtype=np.float64).reshape(-1, 5)
    ib = np.asarray(_uints([v for f, v in mesh if f == 4]), dtype=np.int32).reshape(-1, 3)
    ids, weights = [], []
    for f, v in _fields(buf):
        if f == 2:
            ref = dict(_fields(v))
            ids.append(int(ref.get(1, 0)))
            weights.append(float(ref.get(2, 0.0)))
    return CanonicalFace(vb[:, :3].copy(), ib, np.asarray(ids), np.asarray(weights))


@lru_cache(maxsize=4)
def load_canonical_face(task_path: Path) -> CanonicalFace:
    with zipfile.ZipFile(task_path) as z:
        return parse_geometry_metadata(z.read(_METADATA_ENTRY))
