"""Config dataclasses of the SyncTalk model and its training, and the named profiles.

One typed tree per run (``RunConfig``) builds every component and is saved as ``config.json`` beside
the checkpoints, so a run can be reproduced and a checkpoint checked against the model it was made for.
Each field's docstring says what it does (the CLI help and docs/MODEL.md come from here).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from shared.errors import SyncTalkError


class ConfigError(SyncTalkError):
    """An unknown profile, stage or malformed config file."""

    code = "model_config"


STAGES = ("head", "lips", "torso")
PATCH_LOSSES = ("auto", "lpips", "structural")


@dataclass
class FieldConfig:
    """The head NeRF: tri-plane hash grids and the MLP heads (METHOD.md 2)."""

    num_levels: int = 12
    """Levels of each of the three 2D hash grids (xy, yz, xz)."""
    level_dim: int = 1
    """Features per level."""
    log2_hashmap_size: int = 14
    """Hash table size per level, as a power of two."""
    base_resolution: int = 64
    """Coarsest grid resolution."""
    desired_resolution: int = 512
    """Finest grid resolution."""
    hidden_dim: int = 64
    """Width of the density MLP."""
    geo_feat_dim: int = 64
    """Features passed from the density MLP to the colour MLP."""
    color_hidden_dim: int = 64
    """Width of the colour MLP."""
    attn_hidden_dim: int = 32
    """Width of the audio/expression region-attention MLPs and of the uncertainty MLP."""
    audio_dim: int = 32
    """Size of the attended audio code ``enc_a``."""
    exp_dim: int = 7
    """Expression coefficients (the 7 upper-face blendshapes of the dataset)."""
    latent_dim: int = 4
    """Per-frame latent appearance code."""
    sh_degree: int = 4
    """Spherical-harmonics degree of the view-direction encoding."""
    density_bias: float = -2.0
    """Initial log-density: the head starts nearly transparent and grows where its colour fits (an
    opaque start tends to collapse to 'all transparent' before the grids tell head from empty space)."""
    grid_layout: str = "ngp"
    """Table layout of the hash grids: ``ngp`` (cuda_ext only) or ``tcnn`` (tiny-cuda-nn's layout: the
    grids run through tinycudann where it imports on a CUDA host, through cuda_ext elsewhere)."""


@dataclass
class AudioNetConfig:
    """Per-frame audio feature -> 32-d code, smoothed by attention over neighbouring frames."""

    hidden_dims: tuple[int, ...] = (256, 128)
    """MLP widths after the per-encoder front end (AVE: 512 -> 256 -> 128 -> 32)."""
    window: int = 8
    """Neighbouring frames the temporal attention looks at."""


@dataclass
class RendererConfig:
    """Occupancy grid and ray marching (through cuda_ext)."""

    grid_size: int = 128
    """Occupancy grid cells per side."""
    update_every: int = 16
    """Steps between occupancy-grid updates."""
    grid_decay: float = 0.95
    """Old densities are multiplied by this before the max with new ones."""
    density_thresh: float = 10.0
    """Cells with a lower density (and below the grid mean) are skipped."""
    grid_warmup_steps: int = 64
    """Before this many steps every cell is updated (afterwards only a sample of cells)."""
    grid_audio_samples: int = 2
    """Training frames whose audio/expression condition one grid update (the max is kept)."""
    max_steps: int = 1024
    """Most marching steps per ray."""
    max_samples_per_ray: int = 16
    """Most occupied samples per ray in training."""
    infer_max_samples_per_ray: int = 48
    """Most occupied samples per ray when rendering frames."""
    dt_gamma: float = 1.0 / 256
    """Step grows with distance (0: constant step)."""
    min_near: float = 0.05
    """Rays start at least this far from the camera."""
    T_thresh: float = 1e-4
    """Rays stop when transmittance falls below this."""
    chunk_rays: int = 8192
    """Rays per chunk when rendering full frames (bounds memory)."""


@dataclass
class TorsoConfig:
    """2D torso model in image space, conditioned on the head pose (trained after the head)."""

    num_levels: int = 8
    """Levels of the tiled 2D hash grid."""
    level_dim: int = 2
    """Features per level."""
    log2_hashmap_size: int = 14
    """Hash table size per level, as a power of two."""
    base_resolution: int = 16
    """Coarsest grid resolution."""
    desired_resolution: int = 512
    """Finest grid resolution."""
    hidden_dim: int = 32
    """Width of the deformation and colour MLPs."""
    pose_dim: int = 8
    """Size of the pose code the deformation is conditioned on."""
    grid_layout: str = "ngp"
    """Table layout of the torso's hash grid (as ``FieldConfig.grid_layout``)."""


@dataclass
class DataConfig:
    """Rays and patches drawn from the dataset."""

    resolution: int | None = None
    """Train/evaluate at this resolution (frames are resized, intrinsics scaled); None = the dataset's."""
    rays_per_batch: int = 4096
    """Rays per step (split evenly over ``frames_per_batch`` frames in the head stage)."""
    frames_per_batch: int = 1
    """Frames the head stage's rays come from in one step. Several frames per step put different
    audio (and mouths) in one gradient, so the MLPs must use the audio to fit them all; with one frame
    per step the fast hash grids chase each frame's mouth instead and the lips learn slowly."""
    head_fraction: float = 0.75
    """Share of the rays drawn inside the head's box (the rest anywhere in the frame)."""
    lips_fraction: float = 0.0
    """Share of the head stage's rays drawn inside the lips box (taken from the head's share): the
    mouth is a few percent of the face but carries all of the audio's effect."""
    eyes_fraction: float = 0.0
    """Share of the head stage's rays drawn inside the eyes box (taken from the head's share): the
    eyes are a fraction of a percent of the frame, and a blink shows nowhere else."""
    expression_sampling: float = 0.0
    """Head-stage frames are drawn with weight ``(1 - s) + s * novelty``, novelty being the frame's
    distance from the median expression (mean 1 over the training frames). Rare expressions such as
    blinks (a few percent of the frames) are then seen often enough to be learnt; 0 draws uniformly."""
    audio_warp: float = 0.0
    """Speaker augmentation of mel features in the head and lips stages: each frame's window has its
    frequency axis scaled by a random factor exp(u * audio_warp), u in [-1, 1] (vocal tract length
    perturbation), so new voices with other formants still move the lips; 0 turns it off."""
    audio_gain_db: float = 0.0
    """Level augmentation of mel features: a random offset of up to this many dB per window (on top of
    the dataset's speech level normalization); 0 turns it off."""
    patch_size: int = 32
    """Side of the random patches of the lips stage (64 at full scale)."""
    patches_per_batch: int = 2
    """Random patches per lips-stage step, besides the whole lips box."""
    cache_bytes: int = 512 * 1024**2
    """Decoded frames kept in memory (the rest stream from disk)."""


@dataclass
class LossConfig:
    """Weights of the training losses (METHOD.md 3)."""

    uncertainty: bool = True
    """Weight the photometric loss by the predicted uncertainty."""
    beta_min: float = 0.05
    """Floor of the predicted uncertainty."""
    alpha_entropy: float = 1e-4
    """Weight of the entropy of the head's opacity (pushes it to 0 or 1)."""
    attention: float = 1e-3
    """Weight of the masked-attention losses."""
    patch_structure: float = 0.02
    """Weight of the lips stage's patch loss (see ``patch_loss``)."""
    patch_loss: str = "auto"
    """``auto``: LPIPS where its weights are in the model directory (``MODEL_DIR/lpips``), else the
    structural (1 - SSIM) loss; ``lpips``: LPIPS, an error where its weights are missing;
    ``structural``: 1 - SSIM."""
    lip_sync: float = 0.05
    """Weight of the audio code's lip-shape regression: a linear head on ``enc_a`` predicts the frame's
    lip shape (landmark distances). It teaches the audio net what the mouth does within the first
    few hundred steps, long before the photometric loss alone would (0 turns it off)."""
    lip_sync_frames: int = 64
    """Training frames per step in the lip-shape regression (their audio codes only: cheap)."""
    torso_alpha: float = 0.1
    """Weight of the torso alpha supervision (the dataset's torso mask)."""


@dataclass
class TrainerConfig:
    """Stages, optimiser, EMA, checkpoints."""

    head_steps: int = 100_000
    """Steps of the head stage."""
    lips_steps: int = 25_000
    """Steps of the lips fine-tune."""
    torso_steps: int = 50_000
    """Steps of the torso stage (head frozen)."""
    lr_grid: float = 1e-2
    """Learning rate of the hash grids."""
    lr_mlp: float = 1e-3
    """Learning rate of the MLPs (and latent codes)."""
    lr_final_factor: float = 0.1
    """Exponential decay over each stage down to this factor."""
    weight_decay: float = 1e-6
    """AdamW weight decay of the MLPs."""
    ema_decay: float = 0.95
    """EMA of the weights used for evaluation (applied every step)."""
    checkpoint_every: int = 1000
    """Steps between checkpoints (and at every stage end)."""
    amp: bool = True
    """Mixed precision where a CUDA device is used."""
    seed: int = 0
    """Seeds every random draw of the run (rays, marching jitter, grid updates)."""
    log_every: int = 50
    """Steps between progress reports."""


@dataclass
class RunConfig:
    """The whole run: what is trained, how, on what data."""

    profile: str = "standard"
    field: FieldConfig = dataclasses.field(default_factory=FieldConfig)
    audio: AudioNetConfig = dataclasses.field(default_factory=AudioNetConfig)
    renderer: RendererConfig = dataclasses.field(default_factory=RendererConfig)
    torso: TorsoConfig = dataclasses.field(default_factory=TorsoConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    loss: LossConfig = dataclasses.field(default_factory=LossConfig)
    trainer: TrainerConfig = dataclasses.field(default_factory=TrainerConfig)
    stages: tuple[str, ...] = STAGES
    """Stages to run, in order (a subset of head, lips, torso)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def steps_of(self, stage: str) -> int:
        return int(getattr(self.trainer, f"{stage}_steps"))

    def architecture(self) -> dict[str, Any]:
        """The fields a checkpoint must match to load (shapes of every tensor depend on these)."""
        keep = {"field": self.field, "audio": self.audio, "torso": self.torso}
        arch = {k: dataclasses.asdict(v) for k, v in keep.items()}
        arch["grid_size"] = self.renderer.grid_size
        return arch


def _sub(cls: type, values: dict[str, Any]) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - names
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
    kwargs = dict(values)
    for f in dataclasses.fields(cls):
        if f.name in kwargs and isinstance(kwargs[f.name], list):
            kwargs[f.name] = tuple(kwargs[f.name])
    return cls(**kwargs)


_SECTIONS: dict[str, type] = {
    "field": FieldConfig,
    "audio": AudioNetConfig,
    "renderer": RendererConfig,
    "torso": TorsoConfig,
    "data": DataConfig,
    "loss": LossConfig,
    "trainer": TrainerConfig,
}


def config_from_dict(values: dict[str, Any]) -> RunConfig:
    """Rebuild a RunConfig from ``to_dict()`` output (config.json); unknown keys are an error."""
    values = dict(values)
    kwargs: dict[str, Any] = {}
    for name, cls in _SECTIONS.items():
        kwargs[name] = _sub(cls, values.pop(name, {}))
    if "stages" in values:
        kwargs["stages"] = parse_stages(values.pop("stages"))
    kwargs["profile"] = values.pop("profile", "custom")
    if values:
        raise ConfigError(f"unknown config keys: {sorted(values)}")
    return RunConfig(**kwargs)


def parse_stages(stages: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    items = [s.strip() for s in stages.split(",")] if isinstance(stages, str) else list(stages)
    items = [s for s in items if s]
    bad = [s for s in items if s not in STAGES]
    if bad or not items:
        raise ConfigError(f"stages must be a comma list of {', '.join(STAGES)} (got {stages!r})")
    return tuple(s for s in STAGES if s in items)  # always in pipeline order


def _tiny() -> RunConfig:
    """CI: trains every stage on a 32-64 px dataset in seconds on CPU."""
    return RunConfig(
        profile="tiny",
        field=FieldConfig(
            num_levels=4,
            level_dim=2,
            log2_hashmap_size=10,
            base_resolution=8,
            desired_resolution=64,
            hidden_dim=32,
            geo_feat_dim=15,
            color_hidden_dim=32,
            attn_hidden_dim=16,
            audio_dim=16,
            sh_degree=2,
        ),
        audio=AudioNetConfig(hidden_dims=(32,), window=4),
        renderer=RendererConfig(
            grid_size=32,
            update_every=4,
            grid_warmup_steps=8,
            max_steps=128,
            max_samples_per_ray=12,
            infer_max_samples_per_ray=24,
            density_thresh=0.5,
            chunk_rays=2048,
            dt_gamma=0.0,
        ),
        torso=TorsoConfig(
            num_levels=4, log2_hashmap_size=10, base_resolution=4, desired_resolution=64, hidden_dim=16
        ),
        data=DataConfig(
            rays_per_batch=512,
            frames_per_batch=2,
            lips_fraction=0.1,
            patch_size=8,
            patches_per_batch=1,
            cache_bytes=64 * 1024**2,
        ),
        trainer=TrainerConfig(
            head_steps=60,
            lips_steps=6,
            torso_steps=30,  # the torso starts undeformed: its loss falls steadily, not in a few steps
            checkpoint_every=10,
            log_every=5,
            lr_grid=3e-2,
            lr_mlp=1e-2,
        ),
    )


def _preview() -> RunConfig:
    """CPU in minutes: 128 px, a few thousand rays per step, a few thousand steps."""
    return RunConfig(
        profile="preview",
        field=FieldConfig(
            num_levels=8,
            level_dim=2,
            log2_hashmap_size=14,
            base_resolution=16,
            desired_resolution=256,
            hidden_dim=64,
            geo_feat_dim=31,
            color_hidden_dim=64,
            attn_hidden_dim=32,
            audio_dim=32,
            sh_degree=3,
        ),
        audio=AudioNetConfig(hidden_dims=(128, 64), window=8),
        renderer=RendererConfig(
            grid_size=64,
            update_every=16,
            grid_warmup_steps=128,
            max_steps=256,
            max_samples_per_ray=12,
            infer_max_samples_per_ray=32,
            density_thresh=2.0,
            chunk_rays=4096,
            dt_gamma=0.0,
        ),
        torso=TorsoConfig(num_levels=6, base_resolution=8, desired_resolution=128, hidden_dim=32),
        data=DataConfig(
            resolution=128,
            rays_per_batch=2048,
            frames_per_batch=8,
            lips_fraction=0.2,
            # blinks: 12 of 500 sample frames; without these (and the scaled expression) none rendered
            eyes_fraction=0.1,
            expression_sampling=0.3,
            patch_size=24,
            patches_per_batch=1,
        ),
        # uncertainty weighting off: the mouth is where the error is largest early on, so it would be
        # down-weighted exactly where the audio has to be learnt (measured: lip-gap r 0.05 -> 0.34)
        loss=LossConfig(uncertainty=False),
        trainer=TrainerConfig(
            head_steps=5500,
            lips_steps=300,
            torso_steps=5000,
            checkpoint_every=500,
            log_every=50,
            ema_decay=0.9,
        ),
    )


def _standard() -> RunConfig:
    """GPU, paper scale (METHOD.md 2-3)."""
    return RunConfig(
        profile="standard",
        # tiny-cuda-nn's table layout: tinycudann computes the grids where the GPU image has it
        field=FieldConfig(grid_layout="tcnn"),
        torso=TorsoConfig(grid_layout="tcnn"),
        data=DataConfig(
            rays_per_batch=65536,
            frames_per_batch=16,  # 4096 rays from each of 16 frames: the MLPs must use the audio
            lips_fraction=0.2,
            eyes_fraction=0.1,  # as preview (measured there): blinks are rare and small
            expression_sampling=0.3,
            patch_size=64,
            patches_per_batch=4,
            cache_bytes=4 * 1024**3,
        ),
        # as in preview: uncertainty weighting would down-weight the mouth while the audio is learnt
        loss=LossConfig(uncertainty=False),
    )


PROFILES = {"tiny": _tiny, "preview": _preview, "standard": _standard}


def scale_steps(config: RunConfig, factor: float) -> RunConfig:
    """``config`` with every stage's steps multiplied by ``factor`` (at least one step each)."""
    if factor != 1.0:
        for stage in STAGES:
            setattr(config.trainer, f"{stage}_steps", max(1, int(round(config.steps_of(stage) * factor))))
    return config


def profile_config(name: str, stages: str | tuple[str, ...] | None = None) -> RunConfig:
    """The named profile's RunConfig, optionally limited to some stages."""
    if name not in PROFILES:
        raise ConfigError(f"unknown profile {name!r}; choose one of {', '.join(PROFILES)}")
    cfg = PROFILES[name]()
    if stages is not None:
        cfg.stages = parse_stages(stages)
    return cfg


__all__ = [
    "STAGES",
    "AudioNetConfig",
    "ConfigError",
    "DataConfig",
    "FieldConfig",
    "LossConfig",
    "RendererConfig",
    "RunConfig",
    "TorsoConfig",
    "TrainerConfig",
    "config_from_dict",
    "parse_stages",
    "profile_config",
    "scale_steps",
]
