"""The face track over the whole video and the one stable square crop chosen from it.

Pass 1 of preprocessing: faces are found on a downscaled copy of every few frames, linked into tracks,
and the largest consistent track (most face area summed over the video) is followed, so a person
passing by, or a poster on the wall, never steals the crop. The crop covers the followed head over its
whole range of motion, with margin for hair above and neck below.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

import cv2
import numpy as np

from gpu_worker.preprocess.errors import NoFaceError
from gpu_worker.preprocess.landmarker import detect_faces, open_face_landmarker
from shared.settings import Settings

# Crop side as a multiple of the face size (landmark box: brow to chin); hair above, neck below.
CROP_FACE_SCALE = 2.4
# The crop centre sits this far (in face sizes) below the face centre: the neck and shoulders matter
# more to the torso model than the space above the hair.
CROP_DOWN_SHIFT = 0.12
DETECT_MAX_SIDE = 640  # pass-1 detection runs on frames no larger than this


@dataclass(frozen=True)
class CropBox:
    """A square crop of the (rotation-applied) source frame, resized to ``resolution``."""

    source_width: int
    source_height: int
    x0: int
    y0: int
    size: int
    resolution: int

    @property
    def scale(self) -> float:
        """Source pixels per crop pixel."""
        return self.size / self.resolution

    def matrix_crop_to_source(self) -> np.ndarray:
        """3x3 affine taking crop pixel coordinates to source pixel coordinates (pixel-centre convention,
        as cv2.warpAffine uses: pixel (i, j) is at integer coordinates). [3, 3]"""
        a = self.scale
        return np.array([[a, 0.0, self.x0 + 0.5 * a - 0.5], [0.0, a, self.y0 + 0.5 * a - 0.5], [0, 0, 1.0]])

    def as_dict(self) -> dict:
        d = asdict(self)
        d["matrix_crop_to_source"] = self.matrix_crop_to_source().tolist()
        return d

    def apply(self, frame: np.ndarray) -> np.ndarray:
        """Cut and resize one source frame [H, W, C] to the crop [R, R, C]. Parts outside the frame
        (only when the head is larger than the frame) are filled by replicating the border."""
        h, w = frame.shape[:2]
        x0, y0, s = self.x0, self.y0, self.size
        if x0 < 0 or y0 < 0 or x0 + s > w or y0 + s > h:
            pad = max(-x0, -y0, x0 + s - w, y0 + s - h, 0)
            frame = cv2.copyMakeBorder(frame, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
            x0, y0 = x0 + pad, y0 + pad
        patch = frame[y0 : y0 + s, x0 : x0 + s]
        interp = cv2.INTER_AREA if s > self.resolution else cv2.INTER_LINEAR
        return cv2.resize(patch, (self.resolution, self.resolution), interpolation=interp)


@dataclass
class FaceTrack:
    frames: list[int]
    boxes: list[np.ndarray]  # each [4] x0, y0, x1, y1 in source px

    @property
    def total_area(self) -> float:
        return float(sum((b[2] - b[0]) * (b[3] - b[1]) for b in self.boxes))


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def link_tracks(detections: list[tuple[int, list[np.ndarray]]], max_gap: int) -> list[FaceTrack]:
    """Greedy linking of per-frame boxes into tracks by overlap with each track's last box."""
    tracks: list[FaceTrack] = []
    for frame, boxes in detections:
        taken: set[int] = set()
        # Larger faces pick first so a small face never steals the main track.
        for box in sorted(boxes, key=lambda b: -(b[2] - b[0]) * (b[3] - b[1])):
            best, best_iou = None, 0.2
            for k, tr in enumerate(tracks):
                if k in taken or frame - tr.frames[-1] > max_gap:
                    continue
                iou = _iou(tr.boxes[-1], box)
                if iou > best_iou:
                    best, best_iou = k, iou
            if best is None:
                tracks.append(FaceTrack([frame], [box]))
                taken.add(len(tracks) - 1)
            else:
                tracks[best].frames.append(frame)
                tracks[best].boxes.append(box)
                taken.add(best)
    return tracks


def choose_crop(track: FaceTrack, width: int, height: int, resolution: int) -> CropBox:
    """One square covering the track's head over its whole motion, shifted and shrunk to fit the frame."""
    boxes = np.stack(track.boxes)  # [K, 4]
    face = float(np.median(np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])))
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2  # [K, 2]
    lo, hi = np.percentile(centres, 2, axis=0), np.percentile(centres, 98, axis=0)
    cx, cy = (lo + hi) / 2
    cy += CROP_DOWN_SHIFT * face
    size = CROP_FACE_SCALE * face + float(np.max(hi - lo))
    size = int(round(min(size, width, height)))
    size = max(size, 16)
    x0 = int(round(np.clip(cx - size / 2, 0, width - size)))
    y0 = int(round(np.clip(cy - size / 2, 0, height - size)))
    return CropBox(width, height, x0, y0, size, resolution)


@dataclass
class TrackDecision:
    crop: CropBox
    sampled_frames: int
    frames_with_face: int
    faces_seen: int  # tracks with a real presence (more than a tenth of the sampled frames)
    warnings: list[str]


def find_face_crop(
    frames: Iterable[tuple[int, np.ndarray]],
    width: int,
    height: int,
    resolution: int,
    settings: Settings,
    *,
    stride: int = 5,
    fps: int = 25,
    progress: Callable[[float], None] | None = None,
    total: int | None = None,
) -> TrackDecision:
    """Pass 1: detect faces on every ``stride``-th frame ([H, W, 3] RGB, full size) and choose the crop."""
    scale = min(1.0, DETECT_MAX_SIDE / max(width, height))
    detections: list[tuple[int, list[np.ndarray]]] = []
    sampled = 0
    with open_face_landmarker(settings, num_faces=4) as landmarker:
        for index, frame in frames:
            if index % stride:
                continue
            small = (
                frame
                if scale == 1.0
                else cv2.resize(frame, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
            )
            faces = detect_faces(landmarker, small, index * 1000 // fps)
            detections.append((index, [f.box / scale for f in faces]))
            sampled += 1
            if progress and total:
                progress(min(1.0, index / total))
    tracks = link_tracks(detections, max_gap=stride * fps)  # a 5 s gap still continues the same person
    with_face = sum(1 for _, b in detections if b)
    if not tracks:
        raise NoFaceError("no face was found anywhere in the video")
    main = max(tracks, key=lambda t: t.total_area)
    present = [t for t in tracks if len(t.frames) > 0.1 * max(1, sampled)]
    warnings = []
    if len(present) > 1:
        warnings.append(
            f"{len(present)} faces appear in the video: following the largest one "
            f"(seen in {len(main.frames)} of {sampled} sampled frames)"
        )
    crop = choose_crop(main, width, height, resolution)
    return TrackDecision(crop, sampled, with_face, len(present), warnings)
