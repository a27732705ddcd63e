"""The head field: tri-plane hash grids, region attention on audio and expression, density/colour/uncertainty.

Points are normalized to [0, 1] inside the head's box; three 2D hash grids (xy, yz, xz) give
``enc_x``. Audio acts on each point through ``a(x)`` and expression through ``e(x)`` (METHOD.md 2):
the masked-attention losses keep each to its own face region.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from gpu_worker.model.audio_net import mlp
from gpu_worker.model.config import FieldConfig
from gpu_worker.model.kernels import tri_plane_grid


def sh_encode(d: torch.Tensor, degree: int) -> torch.Tensor:
    """Real spherical harmonics of unit directions [M, 3] up to ``degree`` (1..4) -> [M, degree^2]."""
    x, y, z = d.unbind(-1)
    out = [torch.full_like(x, 0.28209479177387814)]
    if degree > 1:
        out += [-0.48860251190291987 * y, 0.48860251190291987 * z, -0.48860251190291987 * x]
    if degree > 2:
        xx, yy, zz = x * x, y * y, z * z
        out += [
            1.0925484305920792 * x * y,
            -1.0925484305920792 * y * z,
            0.94617469575755997 * zz - 0.31539156525251999,
            -1.0925484305920792 * x * z,
            0.54627421529603959 * (xx - yy),
        ]
    if degree > 3:
        out += [
            0.59004358992664352 * y * (-3.0 * xx + yy),
            2.8906114426405538 * x * y * z,
            0.45704579946446572 * y * (1.0 - 5.0 * zz),
            0.3731763325901154 * z * (5.0 * zz - 3.0),
            0.45704579946446572 * x * (1.0 - 5.0 * zz),
            1.4453057213202769 * z * (xx - yy),
            0.59004358992664352 * x * (-xx + 3.0 * yy),
        ]
    return torch.stack(out, -1)


class _BoundedExp(torch.autograd.Function):
    """exp(h) with h clamped to [-10, 15] in both passes, but a gradient that never vanishes.

    A plain exp lets a region that went transparent early (before the grid features differ between
    head and empty space) underflow to sigma = 0, where it gets no gradient and never comes back. The
    clamp's gradient here is the clamped exp's value, not 0, so such a region stays trainable.
    """

    @staticmethod
    def forward(ctx, h: torch.Tensor) -> torch.Tensor:
        out = torch.exp(h.clamp(-10.0, 15.0))
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (out,) = ctx.saved_tensors
        return grad * out


def density_activation(h: torch.Tensor) -> torch.Tensor:
    return _BoundedExp.apply(h)


EXP_STD_FLOOR = 0.02  # below this spread the expression is treated as (nearly) constant


class TriPlaneField(nn.Module):
    def __init__(self, config: FieldConfig, aabb: torch.Tensor, n_frames: int) -> None:
        super().__init__()
        c = config
        self.config = c
        self.register_buffer("aabb", aabb.clone().float())
        tri_plane = tri_plane_grid(c)
        # the tables stay the field's own modules (state_dict keys field.planes.{0,1,2}.embeddings, as
        # model files have them); the encoder that runs them is kept out of the module tree, where it
        # would register every table a second time
        self.planes = tri_plane.planes
        object.__setattr__(self, "_tri_plane", tri_plane)
        enc_dim = 3 * c.num_levels * c.level_dim
        self.audio_attn = mlp(enc_dim, [c.attn_hidden_dim], c.audio_dim)
        self.exp_attn = mlp(enc_dim, [c.attn_hidden_dim], c.exp_dim)
        self.sigma_net = mlp(
            enc_dim + c.audio_dim + c.exp_dim, [c.hidden_dim, c.hidden_dim], 1 + c.geo_feat_dim
        )
        with torch.no_grad():
            self.sigma_net[-1].bias[0] = c.density_bias
        self.color_net = mlp(c.sh_degree**2 + c.geo_feat_dim + c.latent_dim, [c.color_hidden_dim], 3)
        self.unc_net = mlp(enc_dim, [c.attn_hidden_dim], 1)
        self.latents = nn.Embedding(n_frames, c.latent_dim)
        nn.init.zeros_(self.latents.weight)
        # the expression enters centred and scaled over the training frames (set_expression_stats): a
        # blink moves its two raw coefficients by ~0.4 in a few percent of the frames, too little for
        # the MLPs to pick up in a short run next to the grids (measured: blinks were never rendered).
        # The identity until set, which is how model files from before load (render_api)
        self.register_buffer("exp_mean", torch.zeros(c.exp_dim))
        self.register_buffer("exp_std", torch.ones(c.exp_dim))

    @torch.no_grad()
    def set_expression_stats(self, expression: torch.Tensor) -> None:
        """Centre the expression input on the training frames' mean and scale it so the coefficient that
        moves most has unit spread ([N, 7], saved with the model). One scale for all seven keeps their
        proportions: a coefficient that barely moves (MediaPipe's noise on a still brow) stays small
        instead of being blown up to the size of a blink."""
        exp = expression.float()
        self.exp_mean.copy_(exp.mean(0))
        spread = exp.std(0).max().clamp_min(EXP_STD_FLOOR) if exp.shape[0] > 1 else exp.new_ones(())
        self.exp_std.copy_(spread.expand_as(self.exp_std))

    def _standardized(self, exp: torch.Tensor) -> torch.Tensor:
        return (exp - self.exp_mean) / self.exp_std

    def grid_parameters(self) -> list[nn.Parameter]:
        return list(self.planes.parameters())

    def encode(self, xyz: torch.Tensor) -> torch.Tensor:
        """World points [M, 3] -> enc_x [M, 3 * L * F]: the xy, yz and xz planes, concatenated.

        One fused kernel call for the three planes on the CPU when xyz needs no gradient (training's
        marched samples); plane by plane otherwise (CUDA, tinycudann, gradients for xyz)."""
        lo, hi = self.aabb[:3], self.aabb[3:]
        u = ((xyz - lo) / (hi - lo)).clamp(0, 1)
        return self._tri_plane(u).float()

    def _point_features(self, xyz: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """What depends on the point alone: enc_x [M, E] and the audio / expression attention [M, A] / [M, 7]."""
        enc_x = self.encode(xyz)
        return enc_x, torch.sigmoid(self.audio_attn(enc_x)), torch.sigmoid(self.exp_attn(enc_x))

    def _sigma_net(
        self,
        enc_x: torch.Tensor,
        a_attn: torch.Tensor,
        e_attn: torch.Tensor,
        enc_a: torch.Tensor,
        exp: torch.Tensor,
    ) -> torch.Tensor:
        """The density MLP's output [M, 1 + G] for conditions per frame ([A], [7]) or per point."""
        m = enc_x.shape[0]
        enc_a = enc_a.expand(m, -1) if enc_a.dim() == 1 else enc_a
        exp = self._standardized(exp.expand(m, -1) if exp.dim() == 1 else exp)
        return self.sigma_net(torch.cat([enc_x, enc_a * a_attn, exp * e_attn], -1))

    def density(self, xyz: torch.Tensor, enc_a: torch.Tensor, exp: torch.Tensor) -> dict[str, torch.Tensor]:
        """xyz [M, 3]; enc_a [A] and exp [7] for the frame (broadcast) or per point [M, A] / [M, 7]."""
        enc_x, a_attn, e_attn = self._point_features(xyz)
        h = self._sigma_net(enc_x, a_attn, e_attn, enc_a, exp)
        sigma = density_activation(h[:, 0])  # [M]
        return {"sigma": sigma, "geo": h[:, 1:], "enc_x": enc_x, "a_attn": a_attn, "e_attn": e_attn}

    @torch.no_grad()
    def max_density(
        self, xyz: torch.Tensor, conditions: list[tuple[torch.Tensor, torch.Tensor]]
    ) -> torch.Tensor:
        """xyz [M, 3], frames' conditions [(enc_a [A], exp [7]), ...] -> the largest sigma [M] over them.

        The occupancy grid's update: the point features are computed once for all the conditions.
        """
        point = self._point_features(xyz)
        sigmas = (density_activation(self._sigma_net(*point, a, e)[:, 0]) for a, e in conditions)
        return functools.reduce(torch.maximum, sigmas)

    def forward(
        self,
        xyz: torch.Tensor,
        dirs: torch.Tensor,
        enc_a: torch.Tensor,
        exp: torch.Tensor,
        latent: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        out = self.density(xyz, enc_a, exp)
        out["rgb"] = self.color(dirs, out["geo"], latent)
        # uncertainty sees the geometry only (detached) so it cannot reshape the scene to lower its loss
        out["unc"] = nn.functional.softplus(self.unc_net(out["enc_x"].detach()))[:, 0]  # [M]
        return out

    def infer(
        self,
        xyz: torch.Tensor,
        dirs: torch.Tensor,
        enc_a: torch.Tensor,
        exp: torch.Tensor,
        latent: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """Rendering only: sigma [M] and rgb [M, 3], without the uncertainty and attention outputs
        training needs. Conditions per frame ([A], [7], [L]) or per point ([M, A], [M, 7], [M, L])."""
        out = self.density(xyz, enc_a, exp)
        return {"sigma": out["sigma"], "rgb": self.color(dirs, out["geo"], latent)}

    def color(self, dirs: torch.Tensor, geo: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        """View directions [M, 3], density features [M, G], latent [L] or [M, L] -> rgb [M, 3]."""
        sh = sh_encode(dirs, self.config.sh_degree)  # [M, deg^2]
        lat = latent.expand(geo.shape[0], -1)
        return torch.sigmoid(self.color_net(torch.cat([sh, geo, lat], -1)))
