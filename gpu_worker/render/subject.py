"""A trained subject made ready to render: its model, its dataset's per-frame data and its source video.

Loading is the slow part of a render (the model's weights, the dataset's arrays); ``Subject`` does it
once, and every track rendered afterwards reuses it (prepare once, render many). Images of the dataset
(masks, real crops, torso layers) are read as the walk needs them, through a small cache.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

import cv2
import numpy as np

from gpu_worker.model.dataparser import DatasetInfo, parse_dataset
from gpu_worker.model.loading import AVE_FILE, LoadedModel, load_model
from gpu_worker.preprocess.crop import CropBox
from gpu_worker.render.options import SourceVideoError
from shared.errors import DatasetError
from shared.settings import Settings


class DatasetImages:
    """Per-frame images of a dataset, read on demand and kept in a small LRU cache (a walk at 30 fps over
    25 fps frames asks for the same frame twice in a row; ping-pong revisits at the turns)."""

    def __init__(self, info: DatasetInfo, items: int = 64) -> None:
        self.info = info
        self.items = items
        self._cache: OrderedDict[tuple[str, int, int], np.ndarray] = OrderedDict()

    def get(self, kind: str, index: int, size: int) -> np.ndarray:
        """kind ``frames`` (RGB uint8), ``face_mask`` (float32 [S, S] 0..1), ``torso`` (RGBA float32 0..1)
        at ``size`` px."""
        key = (kind, index, size)
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        img = self._read(kind, index, size)
        self._cache[key] = img
        if len(self._cache) > self.items:
            self._cache.popitem(last=False)
        return img

    def _read(self, kind: str, index: int, size: int) -> np.ndarray:
        path = self.info.image_path(kind, index)
        flag = {"frames": cv2.IMREAD_COLOR, "face_mask": cv2.IMREAD_GRAYSCALE}.get(kind, cv2.IMREAD_UNCHANGED)
        img = cv2.imread(str(path), flag)
        if img is None:
            raise DatasetError(f"cannot read {path}")
        if img.shape[0] != size:
            interp = cv2.INTER_AREA if img.shape[0] > size else cv2.INTER_LINEAR
            img = cv2.resize(img, (size, size), interpolation=interp)
        if kind == "frames":
            return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        if kind == "face_mask":
            return img.astype(np.float32) / 255
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGBA).astype(np.float32) / 255  # torso


class Subject:
    """Everything a render of this subject needs, loaded once."""

    def __init__(
        self,
        model_dir: str | Path,
        settings: Settings,
        *,
        source: str | Path | None = None,
        dataset: str | Path | None = None,
        device: str | None = None,
    ) -> None:
        self.settings = settings
        self.model_dir = Path(model_dir)
        self.loaded: LoadedModel = load_model(self.model_dir, device)
        spec = self.loaded.spec
        root = Path(dataset) if dataset else self.loaded.dataset
        if root is None:
            raise DatasetError(f"the model in {model_dir} does not record its dataset; pass the dataset")
        self.info = parse_dataset(root, spec.resolution)  # [N] per-frame arrays at the model's resolution
        if self.info.frame_count != spec.n_frames:
            raise DatasetError(
                f"dataset {root} has {self.info.frame_count} frames; the model was trained on {spec.n_frames}"
            )
        manifest = json.loads((self.info.root / "manifest.json").read_text())
        n = self.info.frame_count
        self.usable = np.asarray(manifest.get("usable") or [True] * n, bool)  # [N]
        self.train = np.zeros(n, bool)
        self.train[self.info.train_ids] = True
        self.dataset_res = int(manifest["resolution"])
        crop = manifest.get("crop") or {}
        self.crop = CropBox(
            int(crop.get("source_width", self.dataset_res)), int(crop.get("source_height", self.dataset_res)),
            int(crop.get("x0", 0)), int(crop.get("y0", 0)), int(crop.get("size", self.dataset_res)),
            int(crop.get("resolution", self.dataset_res)),
        )  # fmt: skip
        recorded = (manifest.get("source_probe") or {}).get("path")
        self.source = Path(source) if source else (Path(recorded) if recorded else None)
        self.images = DatasetImages(self.info)
        bg = cv2.imread(str(self.info.root / "background.png"), cv2.IMREAD_COLOR)
        if bg is None:
            raise DatasetError(f"dataset {self.info.root} has no readable background.png")
        plate = cv2.resize(bg, (spec.resolution, spec.resolution), interpolation=cv2.INTER_AREA)
        self.plate = cv2.cvtColor(plate, cv2.COLOR_BGR2RGB).astype(np.float32) / 255  # [R, R, 3]
        ave = self.model_dir / AVE_FILE
        self.ave_checkpoint = ave if ave.is_file() else None
        self._towers = None
        self._source_video = None  # opened on the first fullframe render, kept for the next ones

    @property
    def model_res(self) -> int:
        return self.loaded.spec.resolution

    def towers(self):
        """The AVE towers beside the model (for the sync QC), loaded on first use; None without them."""
        if self.ave_checkpoint is not None and self._towers is None:
            from gpu_worker.ave import load_towers

            self._towers = load_towers(self.ave_checkpoint)
        return self._towers

    def close(self) -> None:
        """Release the source video's decoder and its frame window."""
        if self._source_video is not None:
            self._source_video.close()
            self._source_video = None

    def source_video(self):
        """The subject's source video for fullframe renders, checked against the dataset's crop; opened
        once (its frame table is read through the whole file) and kept for the next renders."""
        if self._source_video is None:
            self._source_video = self._open_source()
        return self._source_video

    def _open_source(self):
        from gpu_worker.render.source import SourceVideo

        if self.source is None:
            raise SourceVideoError(
                "fullframe needs the subject's source video: this dataset does not record one; pass it "
                "(--source) or render in portrait or crop mode"
            )
        if not self.source.is_file():
            raise SourceVideoError(
                f"the subject's source video {self.source} is not there any more; pass it (--source) or "
                "render in portrait or crop mode"
            )
        video = SourceVideo(self.source, self.settings)
        expected = (self.crop.source_width, self.crop.source_height)
        if (video.width, video.height) != expected:
            video.close()
            raise SourceVideoError(
                f"{self.source.name} is {video.width}x{video.height}, but the subject was learnt from a "
                f"{expected[0]}x{expected[1]} video: pass the subject's own source video"
            )
        return video
