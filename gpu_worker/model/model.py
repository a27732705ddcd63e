"""The SyncTalk model: owns the head field, audio net, occupancy grid and torso, and composites them.

Rendering a pixel: head (volume rendered, premultiplied) over the torso (2D RGBA) over the plate.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from gpu_worker.model.audio_net import AudioNet
from gpu_worker.model.config import RunConfig
from gpu_worker.model.dataparser import LIP_SHAPE_PAIRS
from gpu_worker.model.field import TriPlaneField
from gpu_worker.model.renderer import OccupancyGrid, render_head_rays, render_head_rays_infer
from gpu_worker.model.torso import TorsoNet

LIP_SHAPE_DIM = len(LIP_SHAPE_PAIRS)


@dataclass
class ModelSpec:
    """What the model is built for (from the dataset); saved with every checkpoint."""

    n_frames: int
    feature_shape: tuple[int, ...]
    audio_encoder: str
    aabb: tuple[float, ...]
    resolution: int
    intrinsics: tuple[float, ...]  # fl_x, fl_y, cx, cy at ``resolution``
    audio_level: str | None = None
    """The speech level normalization the training features had; new audio gets the same. None: a
    dataset (or model) from before it, whose features were computed from the audio as recorded."""

    def to_dict(self) -> dict:
        d = {
            "n_frames": self.n_frames,
            "feature_shape": list(self.feature_shape),
            "audio_encoder": self.audio_encoder,
            "aabb": list(self.aabb),
            "resolution": self.resolution,
            "intrinsics": list(self.intrinsics),
        }
        if self.audio_level is not None:  # absent, as in every file written before it existed
            d["audio_level"] = self.audio_level
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ModelSpec:
        return cls(
            n_frames=int(d["n_frames"]),
            feature_shape=tuple(int(v) for v in d["feature_shape"]),
            audio_encoder=str(d["audio_encoder"]),
            aabb=tuple(float(v) for v in d["aabb"]),
            resolution=int(d["resolution"]),
            intrinsics=tuple(float(v) for v in d["intrinsics"]),
            audio_level=d.get("audio_level"),
        )


class SyncTalkModel(nn.Module):
    def __init__(self, config: RunConfig, spec: ModelSpec) -> None:
        super().__init__()
        self.config = config
        self.spec = spec
        aabb = torch.tensor(spec.aabb, dtype=torch.float32)
        self.field = TriPlaneField(config.field, aabb, spec.n_frames)
        self.audio_net = AudioNet(spec.feature_shape, config.field.audio_dim, config.audio)
        self.grid = OccupancyGrid(config.renderer, aabb)
        self.torso = TorsoNet(config.torso, spec.n_frames, config.field.audio_dim)
        # enc_a -> lip shape (LIP_SHAPE_PAIRS distances, standardized): the lip-sync auxiliary loss
        self.lip_head = nn.Linear(config.field.audio_dim, LIP_SHAPE_DIM)

    # ---- parameter groups (grids get a higher learning rate than MLPs) --------------------------
    def head_param_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        grids = self.field.grid_parameters()
        ids = {id(p) for p in grids}
        head = [*self.field.parameters(), *self.audio_net.parameters(), *self.lip_head.parameters()]
        mlps = [p for p in head if id(p) not in ids]
        return grids, mlps

    def torso_param_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        grids = self.torso.grid_parameters()
        ids = {id(p) for p in grids}
        return grids, [p for p in self.torso.parameters() if id(p) not in ids]

    # ---- conditions -----------------------------------------------------------------------------
    def audio_code(self, window_feats: torch.Tensor) -> torch.Tensor:
        """[B, W, *feature_shape] -> [B, A]."""
        return self.audio_net(window_feats)

    def head_latent(self, index: int | None) -> torch.Tensor:
        """The frame's latent code [L]; None (new frames) -> the mean over training frames."""
        w = self.field.latents.weight
        return w.mean(0) if index is None else w[index]

    def torso_latent(self, index: int | None) -> torch.Tensor:
        w = self.torso.latents.weight
        return (w.mean(0) if index is None else w[index])[None]

    # ---- rendering --------------------------------------------------------------------------------
    def render_head(
        self,
        rays_o: torch.Tensor,
        rays_d: torch.Tensor,
        enc_a: torch.Tensor,
        exp: torch.Tensor,
        latent: torch.Tensor,
        *,
        perturb: bool = False,
        generator: torch.Generator | None = None,
        max_samples: int | None = None,
        group: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """One frame: enc_a [A], exp [7], latent [L]. Rays of F frames: enc_a [F, A], exp [F, 7],
        latent [F, L] and ``group`` [K] (each ray's frame in 0..F-1)."""

        def field_fn(
            xyz: torch.Tensor, dirs: torch.Tensor, g: torch.Tensor | None = None
        ) -> dict[str, torch.Tensor]:
            if g is None:
                return self.field(xyz, dirs, enc_a, exp, latent)
            return self.field(xyz, dirs, per_sample(enc_a, g), per_sample(exp, g), per_sample(latent, g))

        return render_head_rays(
            field_fn,
            self.grid,
            rays_o,
            rays_d,
            perturb=perturb,
            generator=generator,
            max_samples=max_samples or self.config.renderer.max_samples_per_ray,
            group=group,
        )

    @torch.inference_mode()
    def render_head_infer(
        self,
        rays_o: torch.Tensor,
        rays_d: torch.Tensor,
        enc_a: torch.Tensor,
        exp: torch.Tensor,
        latent: torch.Tensor,
        group: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Inference rendering (compacting marcher, early ray termination): image [K, 3], alpha [K].

        One frame: enc_a [A], exp [7], latent [L]. Several frames in one march: enc_a [B, A],
        exp [B, 7], latent [B, L] and ``group`` [K] (each ray's frame in 0..B-1)."""
        if group is None:
            enc_a, exp, latent = enc_a.reshape(1, -1), exp.reshape(1, -1), latent.reshape(1, -1)

        def field_fn(xyz: torch.Tensor, dirs: torch.Tensor, g: torch.Tensor) -> dict[str, torch.Tensor]:
            if enc_a.shape[0] == 1:  # one frame: broadcast, no per-point gather
                return self.field.infer(xyz, dirs, enc_a[0], exp[0], latent[0])
            return self.field.infer(
                xyz, dirs, per_sample(enc_a, g), per_sample(exp, g), per_sample(latent, g)
            )

        return render_head_rays_infer(field_fn, self.grid, rays_o, rays_d, group)

    def render_torso(
        self, px: torch.Tensor, pose: torch.Tensor, enc_a: torch.Tensor, index: int | None
    ) -> torch.Tensor:
        """Pixels [K, 2] (x, y), pose [4, 4], the frame's audio code [A] -> RGBA [K, 4]."""
        uv = (px + 0.5) / self.spec.resolution
        return self.torso(uv, pose, enc_a.detach(), self.torso_latent(index))

    @torch.no_grad()
    def update_grid(
        self, conditions: list[tuple[torch.Tensor, torch.Tensor]], generator: torch.Generator
    ) -> None:
        """Refresh the occupancy grid for some frames' (enc_a [A], exp [7]): the max density is kept."""

        self.grid.update(lambda xyz: self.field.max_density(xyz, conditions), generator)


def per_sample(rows: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Per-frame conditions [F, D] -> each sample's frame's row [M, D] (``g`` [M] int64).

    index_select on the CPU: forward and gradient (index_add) took ~0.5 ms for a preview step's
    [24000, 32] where indexing and its gradient (index_put with accumulation) took ~4.6 ms. CUDA keeps
    indexing: its gradient sums a float16 (autocast) row's many terms in float32, where index_add's
    atomics would add them up in float16."""
    return rows.index_select(0, g) if rows.device.type == "cpu" else rows[g]


def composite(head_image, head_alpha, torso_rgba, plate):
    """The frame's layers, back to front: the plate, the torso (straight alpha), the head (premultiplied).

    The one place they are stacked: training, evaluation and rendering all call it. head_image [..., 3]
    and head_alpha [...] (or both None: no head), torso_rgba [..., 4] (or None: no torso), plate [..., 3]
    -> [..., 3]. Torch tensors or NumPy arrays alike."""
    out = plate
    if torso_rgba is not None:
        a = torso_rgba[..., 3:]
        out = torso_rgba[..., :3] * a + out * (1 - a)
    if head_image is not None:
        out = head_image + (1 - head_alpha)[..., None] * out
    return out
