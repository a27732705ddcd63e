"""Frame rendering API: a loaded model + per-frame poses, expressions and audio features -> frames.

Used by evaluation and by the render stage (gpu_worker/render). Frames are produced in batches by a
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
from gpu_worker.model.cameras import pixel_rays
from gpu_worker.model.checkpoint import CheckpointError
from gpu_worker.model.loading import LoadedModel, load_model
from gpu_worker.model.model import composite
from shared.settings import Settings

__all__ = [
    "FrameBatch",
    "LoadedModel",
    "audio_codes",
    "audio_features_for",
    "load_model",
    "pingpong_indices",
    "render_batch",
    "render_frame",
    "render_frames",
]


@dataclass
class FrameBatch:
    start: int  # index of the first frame of the batch in the sequence
    images: np.ndarray  # [B, R, R, 3] float32 0..1: head over torso over plate
    head_alpha: np.ndarray  # [B, R, R] float32


TorsoSource = Callable[[int], torch.Tensor]  # frame number in the sequence -> [R, R, 4] RGBA


# Rays marched together: one march over a whole frame (or several) makes a few dozen field calls
# instead of a few dozen per chunk. A round evaluates at most as many samples as there are rays
# (n_alive * n_step <= K), each costing ~2 KB of field activations: 128 Ki rays ~ 256 MB.
INFER_BYTES = 256 * 2**20
BYTES_PER_SAMPLE = 2048


def infer_chunk_rays(loaded: LoadedModel) -> int:
    """Rays per inference march: from the byte budget, never fewer than the training chunk."""
    return max(loaded.config.renderer.chunk_rays, INFER_BYTES // BYTES_PER_SAMPLE)


@torch.inference_mode()
def render_batch(
    loaded: LoadedModel,
    poses: torch.Tensor,
    enc_a: torch.Tensor,
    exp: torch.Tensor,
    plate: torch.Tensor,
    torso_rgba: torch.Tensor | None,
    latent_indices: Sequence[int | None],
) -> tuple[torch.Tensor, torch.Tensor]:
    """B frames marched together: poses [B, 4, 4], enc_a [B, A], exp [B, 7], plate [R, R, 3],
    torso [B, R, R, 4] | None (the model's torso) -> images [B, R, R, 3], head alpha [B, R, R]."""
    m, dev = loaded.model, loaded.device
    res, nb = loaded.spec.resolution, poses.shape[0]
    intr = torch.tensor(loaded.spec.intrinsics, dtype=torch.float32)
    ys, xs = torch.meshgrid(torch.arange(res), torch.arange(res), indexing="ij")
    px = torch.stack([xs.reshape(-1), ys.reshape(-1)], -1).float()  # [R*R, 2]
    rays = [pixel_rays(poses[b].cpu(), intr, px) for b in range(nb)]
    rays_o = torch.cat([r[0] for r in rays]).to(dev)  # [B*R*R, 3]
    rays_d = torch.cat([r[1] for r in rays]).to(dev)
    group = torch.arange(nb, device=dev).repeat_interleave(res * res)  # [B*R*R]
    latent = torch.stack([m.head_latent(i) for i in latent_indices])  # [B, L]
    enc_a, exp = enc_a.to(dev), exp.to(dev)
    image = torch.empty(nb * res * res, 3, device=dev)
    alpha = torch.empty(nb * res * res, device=dev)
    chunk = infer_chunk_rays(loaded)
    for s in range(0, rays_o.shape[0], chunk):
        g = group[s : s + chunk]
        g0 = int(g[0])  # frames of this chunk: g0..; the conditions are indexed from g0
        g1 = int(g[-1]) + 1
        head = m.render_head_infer(
            rays_o[s : s + chunk], rays_d[s : s + chunk], enc_a[g0:g1], exp[g0:g1], latent[g0:g1], g - g0
        )
        image[s : s + chunk], alpha[s : s + chunk] = head["image"], head["alpha"]
    if torso_rgba is None:
        px_d = px.to(dev)
        torso = torch.stack(
            [m.render_torso(px_d, poses[b].to(dev), enc_a[b], latent_indices[b]) for b in range(nb)]
        )  # [B, R*R, 4]
    else:
        torso = torso_rgba.reshape(nb, -1, 4).to(dev)
    image = image.reshape(nb, -1, 3)
    alpha = alpha.reshape(nb, -1)
    out = composite(image, alpha, torso, plate.reshape(1, -1, 3).to(dev))
    return out.reshape(nb, res, res, 3).clamp(0, 1), alpha.reshape(nb, res, res)


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
    if compact:
        img, a = render_batch(
            loaded, pose[None], enc_a[None], exp[None], plate,
            None if torso_rgba is None else torso_rgba[None], [latent_index],
        )  # fmt: skip
        return img[0], a[0]
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
        head = m.render_head(
            o.to(dev), d.to(dev), enc_a, exp, latent,
            perturb=False, max_samples=loaded.config.renderer.infer_max_samples_per_ray,
        )  # fmt: skip
        t = (
            m.render_torso(p.to(dev), pose.to(dev), enc_a, latent_index)
            if torso is None
            else torso[s : s + chunk]
        )
        image[s : s + chunk] = composite(head["image"], head["alpha"], t, plate[s : s + chunk])
        alpha[s : s + chunk] = head["alpha"]
    return image.reshape(res, res, 3).clamp(0, 1), alpha.reshape(res, res)


def audio_features_for(
    loaded: LoadedModel,
    samples_16k: np.ndarray,
    settings: Settings,
    *,
    ave_checkpoint: Path | None = None,
    n_frames: int | None = None,
) -> tuple[np.ndarray, list[str]]:
    """Features of new speech (16 kHz mono) as this model was trained on them: its encoder and its
    speech level normalization. [N, *feature_shape] (one frame per 40 ms, or ``n_frames``), warnings."""
    from gpu_worker.preprocess.audio import compute_audio_features

    feats, warnings = compute_audio_features(
        None, loaded.spec.audio_encoder, settings, samples=samples_16k, ave_checkpoint=ave_checkpoint,
        n_frames=n_frames, level=loaded.spec.audio_level,
    )  # fmt: skip
    if tuple(feats.shape[1:]) != loaded.spec.feature_shape:
        raise CheckpointError(
            f"audio features of shape {tuple(feats.shape[1:])} do not fit this model "
            f"({loaded.spec.feature_shape}, encoder {loaded.spec.audio_encoder})"
        )
    return feats, warnings


@torch.inference_mode()
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
    the mean latent, for new audio). A batch's frames are marched together (one set of rounds).
    """
    n = len(poses)
    if not (len(expression) == n and len(audio_features) == n):
        raise ValueError(
            f"poses ({n}), expression ({len(expression)}), audio ({len(audio_features)}) differ in length"
        )
    if torso is None and not loaded.has_torso:
        raise CheckpointError("this model has no trained torso stage: pass the torso frames to render with")
    plate_t = torch.as_tensor(np.asarray(plate, np.float32))
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        frames = range(start, stop)
        enc_a = audio_codes(loaded, audio_features, np.arange(start, stop))  # [B, A]
        exp = torch.from_numpy(np.asarray(expression[start:stop], np.float32))  # [B, 7]
        pose = torch.from_numpy(np.asarray(poses[start:stop], np.float32))  # [B, 4, 4]
        lats = [latent_indices[i] if latent_indices is not None else None for i in frames]
        t = torch.stack([torso(i) for i in frames]) if torso else None
        img, a = render_batch(loaded, pose, enc_a, exp, plate_t, t, lats)
        yield FrameBatch(start=start, images=img.cpu().numpy(), head_alpha=a.cpu().numpy())


@torch.inference_mode()
def audio_codes(loaded: LoadedModel, features: np.ndarray, frames: np.ndarray) -> torch.Tensor:
    """The audio codes enc_a [B, A] of some frames [B] (ints) of a feature sequence [N, *feature_shape]
    (a memmap is fine: only each frame's window of neighbours is read), windows clamped at its ends."""
    idx = window_indices(torch.as_tensor(frames, dtype=torch.long), loaded.config.audio.window, len(features))
    feats = np.stack([np.asarray(features[w], np.float32) for w in idx.numpy()])  # [B, W, *shape]
    return loaded.model.audio_code(torch.from_numpy(feats).to(loaded.device))


def pingpong_indices(frame_ids: Sequence[int], count: int, *, start: int = 0, first: int = 0) -> np.ndarray:
    """Frames played forward then backward (METHOD.md 4), for output frames ``first .. first + count - 1``
    of a walk that begins at position ``start`` of ``frame_ids`` going forward: [count]. Computed per
    slice, so a long output never needs the whole walk in memory."""
    ids = np.asarray(frame_ids, np.int64)
    if ids.size == 0:
        raise ValueError("no frames to take poses from")
    period = max(1, 2 * (ids.size - 1))  # 0, 1, .., n-1, n-2, .., 1
    pos = (np.arange(first, first + count, dtype=np.int64) + start) % period
    return ids[np.where(pos < ids.size, pos, period - pos)]
