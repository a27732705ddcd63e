"""The AVE towers: an audio tower (mel window -> 512) and a lip tower (5 mouth crops -> 512).

Trained together SyncNet-style (see train.py); the audio tower alone is the "ave" audio encoder of
preprocessing (mel windows [B, 1, 80, 16] -> [B, 512]).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

EMBED_DIM = 512
LIP_FRAMES = 5
CROP_H, CROP_W = 32, 64


@dataclass
class AVEConfig:
    """Size of the towers."""

    width: int = 32
    """Channels of the first conv (doubling at each downsampling)."""
    lip_frames: int = LIP_FRAMES
    """Consecutive mouth crops the lip tower sees."""


class _Block(nn.Module):
    """Conv + BN + ReLU, with a residual connection where the shape is kept."""

    def __init__(self, cin: int, cout: int, stride: int | tuple[int, int] = 1) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.BatchNorm2d(cout))
        self.residual = cin == cout and stride == 1
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.act(y + x if self.residual else y)


def _stack(cin: int, width: int, strides: list[int | tuple[int, int]]) -> nn.Sequential:
    layers: list[nn.Module] = [_Block(cin, width)]
    c = width
    for s in strides:
        layers += [_Block(c, c * 2, s), _Block(c * 2, c * 2)]
        c *= 2
    layers += [nn.Conv2d(c, EMBED_DIM, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(1)]
    return nn.Sequential(*layers)


class AudioTower(nn.Module):
    """[B, 1, 80, 16] log-mel window -> [B, 512]."""

    def __init__(self, config: AVEConfig | None = None) -> None:
        super().__init__()
        c = config or AVEConfig()
        self.net = _stack(1, c.width, [(2, 1), (2, 2), (2, 2), (2, 1)])  # 80x16 -> 5x4

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return self.net(mel)


class LipTower(nn.Module):
    """[B, 5, 32, 64] grayscale mouth crops (0..1) -> [B, 512]."""

    def __init__(self, config: AVEConfig | None = None) -> None:
        super().__init__()
        c = config or AVEConfig()
        self.net = _stack(c.lip_frames, c.width, [2, 2, 2, (2, 2)])  # 32x64 -> 2x4

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        return self.net(crops - 0.5)


def sync_probability(audio_emb: torch.Tensor, lip_emb: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of ReLU'd embeddings, in [0, 1] (Wav2Lip's SyncNet): [B, 512] x2 -> [B]."""
    a = nn.functional.normalize(torch.relu(audio_emb), dim=-1)
    v = nn.functional.normalize(torch.relu(lip_emb), dim=-1)
    return (a * v).sum(-1).clamp(1e-6, 1 - 1e-6)
