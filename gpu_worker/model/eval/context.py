"""What every part of evaluation shares: model, dataset, AVE towers, output folder, notes and progress."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from gpu_worker.model.datamanager import DataManager
from gpu_worker.model.dataparser import DatasetInfo
from gpu_worker.model.render_api import LoadedModel
from shared.errors import SyncTalkError
from shared.settings import Settings

ProgressFn = Callable[[str, float, str], None]
TorsoKind = Literal["model", "dataset"]

TORSO_NOTE = (
    "no trained torso stage: frames are rendered over the dataset's torso images (torso: dataset); on "
    "the validation frames those are the truth's own torso pixels, which flatters psnr and ssim"
)
LANDMARKER_NOTE = "face landmarker unavailable: LMD not measured"


class EvaluationError(SyncTalkError):
    code = "evaluation_failed"


@dataclass
class EvalContext:
    """The inputs of one evaluation run; the parts read it and add notes to it."""

    loaded: LoadedModel
    info: DatasetInfo
    dm: DataManager
    settings: Settings
    out: Path
    towers: tuple | None  # AVE (audio tower, lip tower); None: no sync scores
    ave_path: Path | None  # the AVE checkpoint file (new audio's `ave` features), None where absent
    max_frames: int | None
    progress: ProgressFn | None = None
    notes: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def limit(self, n: int) -> int:
        """Frames a part renders out of ``n`` (``max_frames`` bounds each part)."""
        return min(n, self.max_frames) if self.max_frames else n

    @property
    def plate(self) -> np.ndarray:
        return self.dm.background.numpy()  # [R, R, 3]

    def torso(self, frame_ids: Sequence[int]) -> tuple[Callable[[int], torch.Tensor] | None, TorsoKind]:
        """The torso the k-th rendered frame gets: the model's trained torso stage (None, "model"), or,
        without one, the dataset's torso RGBA of ``frame_ids[k]`` ("dataset", with a note): render_frames
        needs a torso, and the dataset's keeps head-only models comparable with earlier figures."""
        if self.loaded.has_torso:
            return None, "model"
        self.note(TORSO_NOTE)
        ids = np.asarray(frame_ids, np.int64)
        return (lambda k: self.dm.image("torso", int(ids[k]))), "dataset"

    def report(self, step: str, done: int, total: int) -> None:
        if self.progress:
            self.progress(step, min(1.0, done / max(total, 1)), f"{done}/{total} frames")


def save_png(path: Path, img: np.ndarray) -> None:
    """An RGB float image [H, W, 3] in 0..1 as an 8-bit PNG."""
    import cv2

    cv2.imwrite(str(path), (np.clip(img, 0, 1) * 255).astype(np.uint8)[..., ::-1])
