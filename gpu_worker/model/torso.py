"""The torso: a 2D model in image space, conditioned on the head pose (METHOD.md 2).

A small MLP deforms pixel coordinates according to the pose (the shoulders follow the head a
little); a tiled 2D hash grid at the deformed coordinates feeds an MLP that gives RGBA. It is
trained after the head, with the head frozen, against the frame minus the head.
"""

from __future__ import annotations

import torch
from torch import nn

from gpu_worker.model.audio_net import mlp
from gpu_worker.model.config import TorsoConfig
from gpu_worker.model.kernels import plane_grid


def _freq(x: torch.Tensor, n: int) -> torch.Tensor:
    """Fourier features of [K, D] -> [K, D * (1 + 2n)]."""
    out = [x]
    for k in range(n):
        out += [torch.sin((2**k) * torch.pi * x), torch.cos((2**k) * torch.pi * x)]
    return torch.cat(out, -1)


class TorsoNet(nn.Module):
    def __init__(self, config: TorsoConfig, n_frames: int, audio_dim: int) -> None:
        super().__init__()
        c = config
        self.pose_net = mlp(12, [c.hidden_dim], c.pose_dim)
        # The jaw covers and uncovers the top of the neck as the mouth moves: on the sample subject the
        # torso's error under the chin followed the mouth opening (r 0.80), not the pose. The head's
        # audio code (which predicts the lip shape) enters the torso's code too; zero at the start.
        self.audio_proj = nn.Linear(audio_dim, c.pose_dim)
        nn.init.zeros_(self.audio_proj.weight)
        nn.init.zeros_(self.audio_proj.bias)
        self.deform_net = mlp(2 * 9 + c.pose_dim, [c.hidden_dim, c.hidden_dim], 2)
        # start undeformed: a random initial shift (up to 0.1 of the frame, different per pose) smears
        # the grid over neighbouring pixels before it has learnt anything
        nn.init.zeros_(self.deform_net[-1].weight)
        nn.init.zeros_(self.deform_net[-1].bias)
        self.grid = plane_grid(c)
        self.color_net = mlp(c.num_levels * c.level_dim + c.pose_dim, [c.hidden_dim, c.hidden_dim], 4)
        self.latents = nn.Embedding(n_frames, c.pose_dim)
        nn.init.zeros_(self.latents.weight)
        # the pose enters standardized over the training frames: a head turning a few degrees moves
        # the raw matrix entries by ~0.01, too little for the small MLPs to act on in a short run
        self.register_buffer("pose_mean", torch.zeros(12))
        self.register_buffer("pose_std", torch.ones(12))

    @torch.no_grad()
    def set_pose_stats(self, poses: torch.Tensor) -> None:
        """Standardize the pose input with the training frames' poses [N, 4, 4] (saved with the model)."""
        flat = poses[:, :3, :4].reshape(-1, 12).float()
        self.pose_mean.copy_(flat.mean(0))
        self.pose_std.copy_(flat.std(0).clamp_min(1e-3) if flat.shape[0] > 1 else torch.ones(12))

    def grid_parameters(self) -> list[nn.Parameter]:
        return list(self.grid.parameters())

    def forward(
        self,
        uv: torch.Tensor,
        pose: torch.Tensor,
        enc_a: torch.Tensor,
        latent: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """uv [K, 2] in 0..1 (x, y of the image), pose [4, 4], the head's audio code enc_a [A]
        -> RGBA [K, 4] (straight alpha)."""
        k = uv.shape[0]
        p = (pose[:3, :4].reshape(1, 12) - self.pose_mean) / self.pose_std
        code = self.pose_net(p) + self.audio_proj(enc_a.reshape(1, -1).float())  # [1, P]
        if latent is not None:
            code = code + latent
        code = code.expand(k, -1)
        shift = torch.tanh(self.deform_net(torch.cat([_freq(uv, 4), code], -1))) * 0.1  # [K, 2]
        feats = self.grid((uv + shift).clamp(0, 1)).float()
        return torch.sigmoid(self.color_net(torch.cat([feats, code], -1)))  # [K, 4]
