"""Ray batches from a dataset: one frame per step, images read from disk through a bounded cache.

Head stage: rays biased toward the head's box. Lips stage: the whole lips box plus random patches
(kept rectangular so a structural/perceptual loss can see them as images). Torso stage: rays over
the whole frame. All random draws come from one torch.Generator so a resumed run draws the same rays.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from gpu_worker.model.cameras import pixel_rays
from gpu_worker.model.config import DataConfig
from gpu_worker.model.dataparser import DatasetInfo
from gpu_worker.model.model import composite
from shared.errors import DatasetError


class ImageCache:
    """Decoded, resized images keyed by path, evicted least-recently-used beyond a byte budget."""

    def __init__(self, resolution: int, max_bytes: int) -> None:
        self.resolution = resolution
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, np.ndarray] = OrderedDict()
        self._bytes = 0

    def get(self, path: Path, channels: int) -> np.ndarray:
        """float32 [R, R, channels] in 0..1 (RGB or RGBA)."""
        key = f"{path}:{channels}"
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        img = _read_image(path, channels, self.resolution)
        self._items[key] = img
        self._bytes += img.nbytes
        while self._bytes > self.max_bytes and len(self._items) > 1:
            _, old = self._items.popitem(last=False)
            self._bytes -= old.nbytes
        return img


def _read_image(path: Path, channels: int, resolution: int) -> np.ndarray:
    import cv2

    flag = cv2.IMREAD_UNCHANGED if channels == 4 else cv2.IMREAD_COLOR
    img = cv2.imread(str(path), flag)
    if img is None:
        raise DatasetError(f"cannot read image {path}")
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, -1)
    if channels == 4 and img.shape[2] == 3:
        img = np.concatenate([img, np.full_like(img[..., :1], 255)], -1)
    img = img[..., [2, 1, 0, 3]] if channels == 4 else img[..., [2, 1, 0]]  # BGR(A) -> RGB(A)
    if img.shape[0] != resolution or img.shape[1] != resolution:
        img = cv2.resize(img, (resolution, resolution), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(img, dtype=np.float32) / 255.0


@dataclass
class RayBatch:
    """One frame's rays and targets. K rays; patches index contiguous runs of rays laid out h x w."""

    index: int
    px: torch.Tensor  # [K, 2] pixel x, y (float)
    rays_o: torch.Tensor  # [K, 3]
    rays_d: torch.Tensor  # [K, 3]
    rgb: torch.Tensor  # [K, 3] ground truth (frame over plate)
    bg: torch.Tensor  # [K, 3] dataset torso over plate (head-stage background)
    plate: torch.Tensor  # [K, 3]
    torso: torch.Tensor  # [K, 4] dataset torso RGBA
    lower_face: torch.Tensor  # [K] bool: pixel inside the lower-face box
    patches: list[tuple[int, int, int]] = field(default_factory=list)  # (start, h, w)
    frames: list[int] = field(default_factory=list)  # the frames of a multi-frame batch ([] = index only)
    group: torch.Tensor | None = None  # [K] int64: each ray's position in ``frames`` (multi-frame only)


class DataManager:
    """Draws RayBatches for a stage; also reads whole frames for evaluation."""

    def __init__(self, info: DatasetInfo, config: DataConfig, device: torch.device | str = "cpu") -> None:
        self.info = info
        self.config = config
        self.device = torch.device(device)
        self.cache = ImageCache(info.resolution, config.cache_bytes)
        self.intrinsics = torch.from_numpy(info.intrinsics)
        self.poses = torch.from_numpy(info.poses)  # [N, 4, 4]
        bg_path = info.root / "background.png"
        if not bg_path.exists():
            raise DatasetError(f"dataset {info.root} has no background.png")
        self.background = torch.from_numpy(self.cache.get(bg_path, 3))  # [R, R, 3]
        self.head_frame_weights = expression_weights(info, config.expression_sampling)  # [T] or None

    # ---- whole images -------------------------------------------------------------------------
    def image(self, kind: str, index: int) -> torch.Tensor:
        """[R, R, C] float in 0..1: kind gt (RGB), torso (RGBA), frames (RGB), face_mask (as RGB)."""
        channels = 4 if kind == "torso" else 3
        return torch.from_numpy(self.cache.get(self.info.image_path(kind, index), channels))

    def torso_over_plate(self, index: int) -> torch.Tensor:
        return composite(None, None, self.image("torso", index), self.background)  # [R, R, 3]

    # ---- ray batches --------------------------------------------------------------------------
    def sample(self, stage: str, generator: torch.Generator) -> RayBatch:
        if stage == "head" and self.config.frames_per_batch > 1:
            return self._multi_frame(generator)
        return self._sample_frame(stage, generator, self.config.rays_per_batch)

    def _multi_frame(self, generator: torch.Generator) -> RayBatch:
        """Head-stage rays from ``frames_per_batch`` random training frames, concatenated."""
        nf = self.config.frames_per_batch
        k = self.config.rays_per_batch // nf
        # gathered on the host and moved to the device once per tensor, not once per frame
        parts = [self._sample_frame("head", generator, k, device=torch.device("cpu")) for _ in range(nf)]
        cat = {
            name: torch.cat([getattr(b, name) for b in parts]).to(self.device)
            for name in ("px", "rays_o", "rays_d", "rgb", "bg", "plate", "torso", "lower_face")
        }
        group = torch.cat([torch.full((b.px.shape[0],), j, dtype=torch.long) for j, b in enumerate(parts)])
        return RayBatch(
            index=parts[0].index, frames=[b.index for b in parts], group=group.to(self.device), **cat
        )

    def _sample_frame(
        self, stage: str, generator: torch.Generator, k: int, device: torch.device | None = None
    ) -> RayBatch:
        ids = self.info.train_ids
        weights = self.head_frame_weights if stage == "head" else None
        if weights is None:
            pick = int(torch.randint(len(ids), (1,), generator=generator))
        else:
            pick = int(torch.multinomial(weights, 1, generator=generator))
        index = int(ids[pick])
        res = self.info.resolution
        patches: list[tuple[int, int, int]] = []
        if stage == "lips":
            pix, patches = self._lips_pixels(index, generator)
        elif stage == "torso":
            pix = _uniform(k, (0, 0, res, res), generator)
        else:
            k_lips = int(round(k * self.config.lips_fraction))
            k_eyes = int(round(k * self.config.eyes_fraction))
            k_face = int(round(k * self.config.head_fraction)) - k_lips - k_eyes
            box = tuple(int(v) for v in self.info.face_box[index])
            lips = tuple(int(v) for v in self.info.lips_box[index])
            eyes = tuple(int(v) for v in self.info.eyes_box[index])
            pix = torch.cat(
                [
                    _uniform(k_lips, lips, generator),
                    _uniform(k_eyes, eyes, generator),
                    _uniform(k_face, box, generator),
                    _uniform(k - k_face - k_lips - k_eyes, (0, 0, res, res), generator),
                ]
            )
        return self._batch(index, pix, patches, device or self.device)

    def _lips_pixels(self, index: int, generator: torch.Generator) -> tuple[torch.Tensor, list]:
        x0, y0, x1, y1 = (int(v) for v in self.info.lips_box[index])
        pieces = [_grid(x0, y0, x1 - x0, y1 - y0)]
        patches = [(0, y1 - y0, x1 - x0)]
        start = pieces[0].shape[0]
        ps = self.config.patch_size
        fx0, fy0, fx1, fy1 = (int(v) for v in self.info.face_box[index])
        for _ in range(self.config.patches_per_batch):
            # patches anywhere in the face box (clamped so they fit in the frame)
            hi_x = max(fx0 + 1, min(fx1, self.info.resolution - ps + 1))
            hi_y = max(fy0 + 1, min(fy1, self.info.resolution - ps + 1))
            px0 = int(torch.randint(fx0, hi_x, (1,), generator=generator))
            py0 = int(torch.randint(fy0, hi_y, (1,), generator=generator))
            px0 = min(px0, self.info.resolution - ps)
            py0 = min(py0, self.info.resolution - ps)
            pieces.append(_grid(px0, py0, ps, ps))
            patches.append((start, ps, ps))
            start += ps * ps
        return torch.cat(pieces), patches

    def _batch(self, index: int, pix: torch.Tensor, patches: list, dev: torch.device) -> RayBatch:
        xi, yi = pix[:, 0].long(), pix[:, 1].long()
        gt = self.image("gt", index)[yi, xi]  # [K, 3]
        torso = self.image("torso", index)[yi, xi]  # [K, 4]
        plate = self.background[yi, xi]
        bg = composite(None, None, torso, plate)
        x0, y0, x1, y1 = (int(v) for v in self.info.lower_face_box[index])
        lower = (xi >= x0) & (xi < x1) & (yi >= y0) & (yi < y1)
        rays_o, rays_d = pixel_rays(self.poses[index], self.intrinsics, pix)
        return RayBatch(
            index=index,
            px=pix.to(dev),
            rays_o=rays_o.to(dev),
            rays_d=rays_d.to(dev),
            rgb=gt.to(dev),
            bg=bg.to(dev),
            plate=plate.to(dev),
            torso=torso.to(dev),
            lower_face=lower.to(dev),
            patches=patches,
        )


def expression_weights(info: DatasetInfo, strength: float) -> torch.Tensor | None:
    """Draw weights [T] of the training frames (``DataConfig.expression_sampling``), None for uniform.

    weight = (1 - s) + s * novelty, novelty being the distance of a frame's expression from the training
    frames' median divided by its mean: below 1 for a common expression, several times 1 for a blink.
    Frames all alike (no spread) are drawn uniformly.
    """
    if strength <= 0:
        return None
    exp = info.expression[info.train_ids].astype(np.float64)  # [T, 7]
    dist = np.linalg.norm(exp - np.median(exp, axis=0), axis=1)  # [T]
    if dist.mean() < 1e-6:
        return None
    weights = (1 - strength) + strength * dist / dist.mean()
    return torch.from_numpy(weights.astype(np.float32))


def _uniform(k: int, box: tuple[int, int, int, int], generator: torch.Generator) -> torch.Tensor:
    x0, y0, x1, y1 = box
    u = torch.rand((k, 2), generator=generator)
    x = (x0 + u[:, 0] * (x1 - x0)).floor().clamp(x0, x1 - 1)
    y = (y0 + u[:, 1] * (y1 - y0)).floor().clamp(y0, y1 - 1)
    return torch.stack([x, y], -1)  # [k, 2]


def _grid(x0: int, y0: int, w: int, h: int) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(y0, y0 + h), torch.arange(x0, x0 + w), indexing="ij")
    return torch.stack([xs.reshape(-1), ys.reshape(-1)], -1).float()  # [h*w, 2] row-major
