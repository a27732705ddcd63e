"""AVE: the audio-visual sync encoder (METHOD.md 1.8), trained here on any set of preprocessed datasets.

``load_audio_encoder(path)`` gives preprocessing its audio tower: mel windows [B, 1, 80, 16] -> [B, 512].
"""

from __future__ import annotations

from pathlib import Path

import torch

from gpu_worker.ave.towers import AudioTower, AVEConfig, LipTower
from gpu_worker.model.checkpoint import CheckpointError, load_checkpoint


def _load(path: str | Path, device: str | torch.device = "cpu") -> dict:
    payload = load_checkpoint(Path(path), device)
    if payload.get("kind") != "ave":
        raise CheckpointError(f"{path} is not an AVE checkpoint (train one with `synctalk train-ave`)")
    return payload


def load_audio_encoder(path: str | Path, device: str | torch.device = "cpu") -> torch.nn.Module:
    """The trained audio tower, eval mode: [B, 1, 80, 16] -> [B, 512]."""
    payload = _load(path, device)
    tower = AudioTower(AVEConfig(**payload["towers"]))
    try:
        tower.load_state_dict(payload["audio_tower"])
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: audio tower does not match: {exc}") from exc
    return tower.to(device).eval()


def load_towers(path: str | Path, device: str | torch.device = "cpu") -> tuple[AudioTower, LipTower]:
    """Both towers (for sync measures), eval mode."""
    payload = _load(path, device)
    cfg = AVEConfig(**payload["towers"])
    audio, lip = AudioTower(cfg), LipTower(cfg)
    try:
        audio.load_state_dict(payload["audio_tower"])
        lip.load_state_dict(payload["lip_tower"])
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: towers do not match: {exc}") from exc
    return audio.to(device).eval(), lip.to(device).eval()


__all__ = ["AVEConfig", "AudioTower", "LipTower", "load_audio_encoder", "load_towers"]
