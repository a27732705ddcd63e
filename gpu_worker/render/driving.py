"""The driving sequence: which subject frame gives each output frame its pose, eyes, torso and background.

The subject's frames are walked forwards then backwards (ping-pong, METHOD.md 4) for as long as the
speech lasts; only the mouth follows the new audio. Three clocks meet here:

- the output's: frame j is shown at j / fps (the source's own rate in fullframe, 25 fps otherwise);
- the walk's: output frame j shows *slot* ``slots[walk(j)]``: a source frame (fullframe) or a dataset
  frame (portrait, crop); only slots whose subject frames are usable (a face was found) are walked;
- the model's: 25 fps. A slot's model time ``u`` may fall between two dataset frames (30 fps over 25):
  pose and expression are then interpolated, images taken from the nearest frame; the audio code of
  output frame j is interpolated at model time j * 25 / fps.

Everything is computed per batch of output frames: a long track never holds its whole walk.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from gpu_worker.model.render_api import pingpong_indices
from gpu_worker.render.options import RenderError

MODEL_FPS = 25


@dataclass(frozen=True)
class Timeline:
    fps: Fraction  # output frames per second
    slots: np.ndarray  # [S] int64, sorted: the usable slots the walk goes over
    start: int  # position in ``slots`` where the walk begins (going forward)
    model_per_slot: Fraction  # dataset frames per slot: 25 / fps (fullframe) or 1

    def walk(self, first: int, count: int) -> np.ndarray:
        """The slots of output frames first .. first + count - 1. [count] int64"""
        return pingpong_indices(self.slots, count, start=self.start, first=first)

    def model_time(self, slots: np.ndarray) -> np.ndarray:
        """Model (dataset-frame) time of slots: [B] float64."""
        return np.asarray(slots, np.float64) * float(self.model_per_slot)

    def audio_time(self, first: int, count: int) -> np.ndarray:
        """Model time (feature index, fractional) of output frames first .. first + count - 1: [count]."""
        return np.arange(first, first + count, dtype=np.float64) * (MODEL_FPS / float(self.fps))


def build_timeline(
    usable: np.ndarray, *, fps: Fraction, slot_count: int | None = None, start_frame: int = 0
) -> Timeline:
    """The walk for a subject whose dataset frames are ``usable`` [N] bool.

    ``slot_count``: frames of the source video at ``fps`` (fullframe); None walks the dataset frames.
    ``start_frame``: the dataset frame (25 fps) to start from; the walk starts at the first usable slot
    at or after it."""
    usable = np.asarray(usable, bool)
    n = usable.size
    if not 0 <= start_frame < n:
        raise RenderError(f"start_frame {start_frame} is outside the subject's frames (0..{n - 1})")
    if slot_count is None:
        per_slot = Fraction(1)
        slots = np.flatnonzero(usable)
        first_slot = start_frame
    else:
        per_slot = Fraction(MODEL_FPS) / Fraction(fps)
        # a slot can be walked when both dataset frames around its model time are usable
        count = min(slot_count, int((n - 1) / per_slot) + 1)
        u = np.arange(count, dtype=np.float64) * float(per_slot)
        lo = np.minimum(np.floor(u).astype(np.int64), n - 1)
        hi = np.minimum(np.ceil(u - 1e-9).astype(np.int64), n - 1)
        slots = np.flatnonzero(usable[lo] & usable[hi])
        first_slot = int(np.ceil(start_frame / per_slot - 1e-9))
    if slots.size == 0:
        raise RenderError("the subject has no usable frames to take poses from")
    start = min(int(np.searchsorted(slots, first_slot)), slots.size - 1)
    return Timeline(fps=Fraction(fps), slots=slots, start=start, model_per_slot=per_slot)


def interpolate_rows(values: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Per-frame rows [N, D] at fractional times t [B] (linear between neighbours): [B, D] float32."""
    t = np.clip(np.asarray(t, np.float64), 0, len(values) - 1)
    i0 = np.floor(t).astype(np.int64)
    i1 = np.minimum(i0 + 1, len(values) - 1)
    w = (t - i0)[:, None]
    return ((1 - w) * values[i0] + w * values[i1]).astype(np.float32)
