"""Training losses (METHOD.md 3): uncertainty-weighted L1, alpha entropy, masked attention, patch structure."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gpu_worker.model.config import LossConfig


def photometric(
    pred: torch.Tensor, gt: torch.Tensor, unc: torch.Tensor | None, cfg: LossConfig
) -> dict[str, torch.Tensor]:
    """L1 [K, 3] vs [K, 3]. With uncertainty [K]: pixels the model is unsure of weigh less
    (weights normalized to mean 1 and detached, so they reweight but cannot shrink the loss), and the
    uncertainty itself is fit to the error with a Laplace likelihood."""
    err = (pred - gt).abs().mean(-1)  # [K]
    out: dict[str, torch.Tensor] = {}
    if unc is None or not cfg.uncertainty:
        out["rgb"] = err.mean()
        return out
    beta = unc + cfg.beta_min
    w = (1.0 / beta).detach()
    w = w / w.mean()
    out["rgb"] = (w * err).mean()
    out["unc"] = (err.detach() / beta + torch.log(beta)).mean() * 0.01
    return out


def alpha_entropy(alpha: torch.Tensor) -> torch.Tensor:
    a = alpha.clamp(1e-5, 1 - 1e-5)
    return -(a * torch.log(a) + (1 - a) * torch.log(1 - a)).mean()


def masked_attention(attn_a: torch.Tensor, attn_e: torch.Tensor, lower_face: torch.Tensor) -> torch.Tensor:
    """Audio attention outside the lower face, expression attention inside it, are penalized."""
    zero = attn_a.new_zeros(())
    outside = attn_a[~lower_face].mean() if (~lower_face).any() else zero
    inside = attn_e[lower_face].mean() if lower_face.any() else zero
    return outside + inside


def _gauss(size: int, sigma: float, device: torch.device) -> torch.Tensor:
    x = torch.arange(size, device=device, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]  # [1, 1, s, s]


def ssim_map(a: torch.Tensor, b: torch.Tensor, window: int = 7) -> torch.Tensor:
    """SSIM of images [B, C, H, W] in 0..1, per pixel (valid region)."""
    c = a.shape[1]
    win = min(window, a.shape[-1], a.shape[-2])
    k = _gauss(win, 1.5, a.device).expand(c, 1, win, win)

    def filt(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, k, groups=c)

    mu_a, mu_b = filt(a), filt(b)
    saa = filt(a * a) - mu_a**2
    sbb = filt(b * b) - mu_b**2
    sab = filt(a * b) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    return ((2 * mu_a * mu_b + c1) * (2 * sab + c2)) / ((mu_a**2 + mu_b**2 + c1) * (saa + sbb + c2))


def patch_images(
    pred: torch.Tensor, gt: torch.Tensor, patches: list[tuple[int, int, int]]
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The rectangular patches of a ray batch as image pairs: pred/gt [K, 3], patches (start, h, w)
    -> [(pred [1, 3, h, w], gt [1, 3, h, w])], leaving out patches too small to compare (< 3 px)."""
    pairs = []
    for start, h, w in patches:
        if h < 3 or w < 3:
            continue
        p = pred[start : start + h * w].reshape(1, h, w, 3).permute(0, 3, 1, 2)
        g = gt[start : start + h * w].reshape(1, h, w, 3).permute(0, 3, 1, 2)
        pairs.append((p, g))
    return pairs


def structural_patch_loss(
    pred: torch.Tensor, gt: torch.Tensor, patches: list[tuple[int, int, int]]
) -> torch.Tensor:
    """1 - SSIM, averaged over the batch's patches (see ``patch_images``)."""
    losses = [1 - ssim_map(p, g).mean() for p, g in patch_images(pred, gt, patches)]
    return torch.stack(losses).mean() if losses else pred.new_zeros(())


def lpips_patch_loss(
    pred: torch.Tensor, gt: torch.Tensor, patches: list[tuple[int, int, int]], net: torch.nn.Module
) -> torch.Tensor:
    """LPIPS (gpu_worker/model/lpips.py), averaged over the batch's patches."""
    losses = [net(p, g)[0] for p, g in patch_images(pred, gt, patches)]
    return torch.stack(losses).mean() if losses else pred.new_zeros(())
