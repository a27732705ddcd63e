"""Audio conditioning: per-frame feature -> small MLP -> attention over neighbouring frames -> enc_a.

The front end depends on the dataset's audio encoder: mel windows [80, 16] pass a small 1D conv over
time, AVE codes [512] go straight in, HuBERT pairs [2, 1024] and Whisper pairs [2, 512] are flattened.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from gpu_worker.model.config import AudioNetConfig


def _relu() -> nn.Module:
    # in place: the activation follows a Linear, whose gradient needs its input, not its output; on the
    # CPU this saves allocating (and page-faulting in) one more [M, hidden] tensor per layer
    return nn.ReLU(inplace=True)


def mlp(
    in_dim: int,
    hidden: tuple[int, ...] | list[int],
    out_dim: int,
    act: Callable[[], nn.Module] = _relu,
) -> nn.Sequential:
    layers: list[nn.Module] = []
    dims = [in_dim, *hidden]
    for a, b in zip(dims[:-1], dims[1:], strict=True):
        layers += [nn.Linear(a, b), act()]
    layers.append(nn.Linear(dims[-1], out_dim))
    return nn.Sequential(*layers)


class _MelFrontEnd(nn.Module):
    """[B, 80, 16] log-mel window -> [B, 256]."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            # activations in place: a convolution's gradient needs its input, not its output
            nn.Conv1d(80, 64, 3, stride=2, padding=1),  # 16 -> 8 time steps
            nn.LeakyReLU(0.02, inplace=True),
            nn.Conv1d(64, 64, 3, stride=2, padding=1),  # 8 -> 4
            nn.LeakyReLU(0.02, inplace=True),
        )
        self.out_dim = 256

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten(1)


class AudioNet(nn.Module):
    """Audio features of a window of frames [B, W, *shape] -> attended code [B, out_dim]."""

    def __init__(self, feature_shape: tuple[int, ...], out_dim: int, config: AudioNetConfig) -> None:
        super().__init__()
        self.feature_shape = tuple(feature_shape)
        self.window = config.window
        if self.feature_shape == (80, 16):
            self.front: nn.Module = _MelFrontEnd()
            front_dim = 256
        else:
            self.front = nn.Flatten(1)
            front_dim = int(torch.tensor(self.feature_shape).prod())
        self.encode = mlp(front_dim, config.hidden_dims, out_dim, act=lambda: nn.LeakyReLU(0.02))
        # temporal attention: scores from a conv over the window, then a learnt mix across positions
        self.attn_conv = nn.Sequential(
            nn.Conv1d(out_dim, 16, 3, padding=1), nn.LeakyReLU(0.02), nn.Conv1d(16, 1, 3, padding=1)
        )
        self.attn_mix = nn.Linear(config.window, config.window)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        b, w = feats.shape[:2]
        codes = self.encode(self.front(feats.reshape(b * w, *self.feature_shape))).reshape(
            b, w, -1
        )  # [B, W, D]
        scores = self.attn_conv(codes.transpose(1, 2)).squeeze(1)  # [B, W]
        weights = torch.softmax(self.attn_mix(scores), dim=-1)  # [B, W]
        return (weights[..., None] * codes).sum(1)  # [B, D]


def window_indices(center: torch.Tensor, window: int, n_frames: int) -> torch.Tensor:
    """Frame indices of the attention window around each centre [B] -> [B, W] (clamped at the ends)."""
    offsets = torch.arange(window, device=center.device) - window // 2
    return (center[:, None] + offsets[None]).clamp(0, n_frames - 1)
