"""Sync measures from the AVE towers: similarity against time offset, confidence, best offset.

Without SyncNet weights (not shipped), this is the project's LSE-C stand-in: for a clip, the mean
sync probability of lips against audio shifted by k frames; confidence = peak - median over k.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from gpu_worker.ave.towers import AudioTower, LipTower, sync_probability


@dataclass
class SyncCurve:
    offsets: np.ndarray  # [K] frames the audio is moved by
    scores: np.ndarray  # [K] mean sync probability

    @property
    def best_offset(self) -> int:
        return int(self.offsets[int(np.argmax(self.scores))])

    @property
    def confidence(self) -> float:
        return float(self.scores.max() - np.median(self.scores))

    @property
    def at_zero(self) -> float:
        return float(self.scores[int(np.flatnonzero(self.offsets == 0)[0])])


@torch.no_grad()
def embed(tower: torch.nn.Module, x: np.ndarray, batch: int = 256) -> torch.Tensor:
    dev = next(tower.parameters()).device
    out = [
        tower(torch.from_numpy(np.ascontiguousarray(x[s : s + batch], np.float32)).to(dev))
        for s in range(0, len(x), batch)
    ]
    return torch.cat(out).cpu()


@torch.no_grad()
def offset_curve(
    audio_tower: AudioTower,
    lip_tower: LipTower,
    windows: np.ndarray,
    lips: np.ndarray,
    max_offset: int = 7,
) -> SyncCurve:
    """windows [F, 80, 16] (audio of frame i), lips [F, 5, 32, 64] (mouth from frame i) -> curve over
    offsets -max..max: score(k) = mean_i P(sync | lips i, audio i + k)."""
    audio_tower.eval()
    lip_tower.eval()
    a = embed(audio_tower, windows[:, None])  # [F, 512]
    v = embed(lip_tower, lips)  # [F, 512]
    n = len(a)
    offsets = np.arange(-max_offset, max_offset + 1)
    scores = []
    for k in offsets:
        i = np.arange(max(0, -k), min(n, n - k))
        scores.append(float(sync_probability(a[i + k], v[i]).mean()) if i.size else 0.0)
    return SyncCurve(offsets=offsets, scores=np.asarray(scores))
