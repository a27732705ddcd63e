"""Frame rendering API: a loaded model + per-frame poses, expressions and audio features -> frames.

Used by evaluation now and by the render/dubbing stage next. Frames are produced in batches by a
generator; rays are rendered in chunks of ``renderer.chunk_rays``, so memory is bounded by the batch
size and the chunk, never by the length of the sequence.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gpu_worker.model.audio_net import window_indices
from gpu_worker.model.checkpoint import CheckpointError, load_checkpoint
from gpu_worker.model.config import RunConfig, config_from_dict
from gpu_worker.model.datamanager import pixel_rays
from gpu_worker.model.model import ModelSpec, SyncTalkModel
from gpu_worker.model.trainer import FINAL, pick_device


@dataclass
class LoadedModel:
    model: SyncTalkModel  # EMA weights, eval mode
    config: RunConfig
    spec: ModelSpec
    device: torch.device
    stages_done: list[str]
    dataset: Path | None
    global_step: int

    @property
    def has_torso(self) -> bool:
        return "torso" in self.stages_done


def load_model(model_dir: str | Path, device: str | torch.device | None = None) -> LoadedModel:
    """Load MODEL_DIR/model.pt (the EMA weights written at the end of each stage)."""
    path = Path(model_dir) / FINAL
    dev = pick_device(device)
    payload = load_checkpoint(path, dev)
    try:
        config = config_from_dict(payload["config"])
        spec = ModelSpec.from_dict(payload["spec"])
        model = SyncTalkModel(config, spec).to(dev)
        model.load_state_dict(payload["model"])
    except (KeyError, RuntimeError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path} does not match this model code: {exc}") from exc
    model.eval()
    ds = payload.get("dataset")
    return LoadedModel(
        model=model,
        config=config,
        spec=spec,
        device=dev,
        stages_done=list(payload.get("stages_done", [])),
        dataset=Path(ds) if ds else None,
        global_step=int(payload.get("global_step", 0)),
    )


@dataclass
class FrameBatch:
    start: int  # index of the first frame of the batch in the sequence
    images: np.ndarray  # [B, R, R, 3] float32 0..1: head over torso over plate
    head_alpha: np.ndarray  # [B, R, R] float32


TorsoSource = Callable[[int], torch.Tensor]  # frame number in the sequence -> [R, R, 4] RGBA


@torch.no_grad()
def render_frame(
    loaded: LoadedModel,
    pose: torch.Tensor,
    enc_a: torch.Tensor,
    exp: torch.Tensor,
    plate: torch.Tensor,
    torso_rgba: torch.Tensor | None,
    latent_index: int | None = None,
    *,
    compact: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One frame: pose [4, 4], enc_a [A], exp [7], plate [R, R, 3], torso [R, R, 4] | None (use the
    model's torso) -> image [R, R, 3], head alpha [R, R]. ``compact``: the inference marcher (rays
    dropped once opaque); False: the training marcher without jitter (a fixed sample budget)."""
    m, dev = loaded.model, loaded.device
    res = loaded.spec.resolution
    intr = torch.tensor(loaded.spec.intrinsics, dtype=torch.float32)
    ys, xs = torch.meshgrid(torch.arange(res), torch.arange(res), indexing="ij")
    px = torch.stack([xs.reshape(-1), ys.reshape(-1)], -1).float()  # [R*R, 2]
    image = torch.empty(res * res, 3, device=dev)
    alpha = torch.empty(res * res, device=dev)
    latent = m.head_latent(latent_index)
    plate = plate.reshape(-1, 3).to(dev)
    torso = torso_rgba.reshape(-1, 4).to(dev) if torso_rgba is not None else None
    chunk = loaded.config.renderer.chunk_rays
    for s in range(0, px.shape[0], chunk):
        p = px[s : s + chunk]
        o, d = pixel_rays(pose.cpu(), intr, p)
        if compact:
            head = m.render_head_infer(o.to(dev), d.to(dev), enc_a, exp, latent)
        else:
            head = m.render_head(
                o.to(dev), d.to(dev), enc_a, exp, latent,
                perturb=False, max_samples=loaded.config.renderer.infer_max_samples_per_ray,
            )  # fmt: skip
        t = m.render_torso(p.to(dev), pose.to(dev), latent_index) if torso is None else torso[s : s + chunk]
        bg = t[:, :3] * t[:, 3:] + plate[s : s + chunk] * (1 - t[:, 3:])
        image[s : s + chunk] = head["image"] + (1 - head["alpha"])[:, None] * bg
        alpha[s : s + chunk] = head["alpha"]
    return image.reshape(res, res, 3).clamp(0, 1), alpha.reshape(res, res)


@torch.no_grad()
def render_frames(
    loaded: LoadedModel,
    poses: np.ndarray,
    expression: np.ndarray,
    audio_features: np.ndarray,
    plate: np.ndarray | torch.Tensor,
    *,
    torso: TorsoSource | None = None,
    latent_indices: Sequence[int | None] | None = None,
    batch_size: int = 4,
) -> Iterator[FrameBatch]:
    """Yield frames in batches for F frames: poses [F, 4, 4], expression [F, 7], audio_features
    [F, *feature_shape] (a memmap is fine: only each frame's window is read), plate [R, R, 3].

    ``torso``: a source of the torso RGBA per frame (e.g. the training frames'); None uses the
    model's trained torso (required then). ``latent_indices``: training-frame latent per frame (None:
    the mean latent, for new audio).
    """
    n = len(poses)
    if not (len(expression) == n and len(audio_features) == n):
        raise ValueError(
            f"poses ({n}), expression ({len(expression)}), audio ({len(audio_features)}) differ in length"
        )
    if torso is None and not loaded.has_torso:
        raise CheckpointError("this model has no trained torso stage: pass the torso frames to render with")
    dev = loaded.device
    plate_t = torch.as_tensor(np.asarray(plate, np.float32))
    m = loaded.model
    window = loaded.config.audio.window
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        imgs, alphas = [], []
        for i in range(start, stop):
            idx = window_indices(torch.tensor([i]), window, n)[0].numpy()  # [W]
            feats = torch.from_numpy(np.asarray(audio_features[idx], np.float32)).to(dev)[None]
            enc_a = m.audio_code(feats)[0]
            exp = torch.from_numpy(np.asarray(expression[i], np.float32)).to(dev)
            pose = torch.from_numpy(np.asarray(poses[i], np.float32))
            lat = latent_indices[i] if latent_indices is not None else None
            img, a = render_frame(loaded, pose, enc_a, exp, plate_t, torso(i) if torso else None, lat)
            imgs.append(img.cpu().numpy())
            alphas.append(a.cpu().numpy())
        yield FrameBatch(start=start, images=np.stack(imgs), head_alpha=np.stack(alphas))


def pingpong_indices(frame_ids: Sequence[int], count: int) -> np.ndarray:
    """Training frames played forward then backward for ``count`` output frames (METHOD.md 4)."""
    ids = np.asarray(frame_ids, np.int64)
    if ids.size == 0:
        raise ValueError("no frames to take poses from")
    cycle = ids if ids.size == 1 else np.concatenate([ids, ids[-2:0:-1]])
    return cycle[np.arange(count) % cycle.size]
