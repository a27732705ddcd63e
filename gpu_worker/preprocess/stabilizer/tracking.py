"""Rigid keypoint tracks: corners on the rigid face region followed by pyramidal Lucas-Kanade flow.

Every step is checked forward and backward (a point must come back to where it started), points that
leave the rigid region are dropped, and new corners are seeded whenever too few remain. Only the track
observations are kept (a few numbers per point per frame), never a dense flow field.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

LK_PARAMS = {
    "winSize": (21, 21),
    "maxLevel": 3,
    "criteria": (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 30, 0.01),
}
FB_MAX_PX = 0.5  # forward-backward disagreement above this drops the point


@dataclass
class Tracks:
    frame: np.ndarray  # [M] int32 frame index of each observation
    track: np.ndarray  # [M] int32 track id
    xy: np.ndarray  # [M, 2] float32 continuous pixel coordinates (pixel centres at i + 0.5)

    @property
    def n_tracks(self) -> int:
        return int(self.track.max()) + 1 if len(self.track) else 0


def rigid_region_mask(landmarks: np.ndarray, rigid_ids: np.ndarray, size: int) -> np.ndarray:
    """Disks around the rigid landmarks (forehead, nose, upper cheeks): where keypoints may live. [R, R]"""
    xy = landmarks[rigid_ids, :2]
    face = float(np.ptp(landmarks[:, 1]))
    radius = max(2, int(0.05 * face))
    mask = np.zeros((size, size), np.uint8)
    for x, y in np.round(xy).astype(int):
        cv2.circle(mask, (int(x), int(y)), radius, 255, -1)
    return mask


class KeypointTracker:
    """Feed grayscale crops in frame order with their landmarks; collect track observations."""

    def __init__(self, rigid_ids: np.ndarray, size: int, target: int = 120) -> None:
        self.rigid_ids = rigid_ids
        self.size = size
        self.target = target
        self.min_distance = max(3, size // 64)
        self._prev: np.ndarray | None = None
        self._pts = np.zeros((0, 2), np.float32)  # [K, 2] OpenCV pixel coordinates
        self._ids = np.zeros(0, np.int32)
        self._next_id = 0
        self._frames: list[np.ndarray] = []
        self._tracks: list[np.ndarray] = []
        self._xy: list[np.ndarray] = []

    def step(self, index: int, gray: np.ndarray, landmarks: np.ndarray, usable: bool) -> None:
        if not usable:
            self._prev, self._pts, self._ids = None, self._pts[:0], self._ids[:0]
            return
        mask = rigid_region_mask(landmarks, self.rigid_ids, self.size)
        if self._prev is not None and len(self._pts):
            self._follow(gray, mask)
        if len(self._pts) < 0.7 * self.target:
            self._seed(gray, mask)
        self._prev = gray
        if len(self._pts):
            self._frames.append(np.full(len(self._pts), index, np.int32))
            self._tracks.append(self._ids.copy())
            self._xy.append(self._pts + 0.5)

    def _follow(self, gray: np.ndarray, mask: np.ndarray) -> None:
        p0 = self._pts.reshape(-1, 1, 2)
        p1, st1, _ = cv2.calcOpticalFlowPyrLK(self._prev, gray, p0, None, **LK_PARAMS)
        p0b, st2, _ = cv2.calcOpticalFlowPyrLK(gray, self._prev, p1, None, **LK_PARAMS)
        p1 = p1.reshape(-1, 2)
        fb = np.linalg.norm(p0b.reshape(-1, 2) - self._pts, axis=1)
        xi = np.clip(np.round(p1[:, 0]).astype(int), 0, self.size - 1)
        yi = np.clip(np.round(p1[:, 1]).astype(int), 0, self.size - 1)
        inside = (p1 >= 0).all(1) & (p1 < self.size).all(1)
        keep = (st1.ravel() == 1) & (st2.ravel() == 1) & (fb < FB_MAX_PX) & inside & (mask[yi, xi] > 0)
        self._pts, self._ids = p1[keep].astype(np.float32), self._ids[keep]

    def _seed(self, gray: np.ndarray, mask: np.ndarray) -> None:
        free = mask.copy()
        for x, y in np.round(self._pts).astype(int):
            cv2.circle(free, (int(x), int(y)), self.min_distance, 0, -1)
        want = self.target - len(self._pts)
        new = cv2.goodFeaturesToTrack(gray, want, 0.01, self.min_distance, mask=free, blockSize=5)
        if new is None:
            return
        new = new.reshape(-1, 2).astype(np.float32)
        self._pts = np.concatenate([self._pts, new])
        self._ids = np.concatenate(
            [self._ids, np.arange(self._next_id, self._next_id + len(new), dtype=np.int32)]
        )
        self._next_id += len(new)

    def result(self, min_length: int = 3) -> Tracks:
        """All observations of tracks seen in at least ``min_length`` frames, ids renumbered from 0."""
        if not self._frames:
            return Tracks(np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros((0, 2), np.float32))
        frame = np.concatenate(self._frames)
        track = np.concatenate(self._tracks)
        xy = np.concatenate(self._xy)
        counts = np.bincount(track)
        keep = counts[track] >= min_length
        _, renum = np.unique(track[keep], return_inverse=True)
        return Tracks(frame[keep], renum.astype(np.int32), xy[keep])
