"""LPIPS, the learned perceptual patch distance of the lips stage (METHOD.md 3), where its weights are present.

LPIPS (Zhang et al., CVPR 2018, "The Unreasonable Effectiveness of Deep Features as a Perceptual
Metric"), AlexNet variant: both images go through AlexNet's five conv blocks; at each block's ReLU
the features are normalized to unit length along the channels, their squared difference is weighted
per channel by a learned 1x1 layer (the "v0.1" linear weights), averaged over the image, and the five
terms are summed. The network is frozen; only the rendered patch receives gradients.

Weights are never downloaded. They come from ``settings.model_dir / "lpips"``:
- ``alexnet.pth``: torchvision's ImageNet AlexNet state dict (``alexnet-owt-7be5be79.pth``); only
  its ``features.*`` tensors are read;
- ``alex.pth``: the LPIPS v0.1 linear weights (``lin0.model.1.weight`` .. ``lin4``), which ship in
  the ``lpips`` wheel on PyPI at ``lpips/weights/v0.1/alex.pth``.
Where the folder is absent the lips stage uses the structural (1 - SSIM) patch loss instead
(``LossConfig.patch_loss``); a folder with a missing or broken file is an error, not a silent fallback.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from shared.errors import SyncTalkError

LPIPS_DIR_NAME = "lpips"
BACKBONE_FILE = "alexnet.pth"
LINEAR_FILE = "alex.pth"
MIN_SIDE = 64  # AlexNet's stride-4 stem and two poolings leave nothing of a patch much smaller than this


class LPIPSWeightsError(SyncTalkError):
    """The LPIPS folder exists but its weight files are missing or do not fit the network."""

    code = "lpips_weights"


class LPIPS(nn.Module):
    """Perceptual distance between image batches [B, 3, H, W] in [0, 1] -> [B] (0 for equal images)."""

    TAPS = (1, 4, 7, 9, 11)  # indices in ``features`` of the five ReLUs whose outputs are compared
    CHANNELS = (64, 192, 384, 256, 256)

    def __init__(self) -> None:
        super().__init__()
        # AlexNet's feature extractor, laid out as torchvision's (so its state dict loads as is)
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(256, 256, kernel_size=3, padding=1),
            nn.ReLU(),
        )
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, kernel_size=1, bias=False) for c in self.CHANNELS)
        # LPIPS feeds AlexNet images in [-1, 1], shifted and scaled per channel (ImageNet statistics)
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))
        self.requires_grad_(False)  # frozen (no dropout or batch norm: train/eval mode changes nothing)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        # float32 even under AMP: the channel norms square features summed over 256 channels
        with torch.autocast(a.device.type, enabled=False):
            return self._distance(a.float(), b.float())

    def _distance(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        x = torch.cat([a, b])  # [2B, 3, H, W]: one pass through the network for both
        if min(x.shape[-2:]) < MIN_SIDE:
            h, w = x.shape[-2:]
            k = MIN_SIDE / min(h, w)
            x = F.interpolate(x, size=(round(h * k), round(w * k)), mode="bilinear", align_corners=False)
        x = ((x * 2 - 1) - self.shift) / self.scale
        n = a.shape[0]
        total = x.new_zeros(n)
        tap = 0
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.TAPS:
                unit = x / (x.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)  # unit length along channels
                diff = (unit[:n] - unit[n:]) ** 2  # [B, C, h, w]
                total = total + self.lins[tap](diff).mean((1, 2, 3))
                tap += 1
        return total


def lpips_dir(model_dir: Path) -> Path:
    return Path(model_dir) / LPIPS_DIR_NAME


def load_lpips(model_dir: Path, device: torch.device | str = "cpu") -> LPIPS | None:
    """The LPIPS network from ``model_dir / "lpips"``, or None where that folder does not exist."""
    folder = lpips_dir(model_dir)
    if not folder.is_dir():
        return None
    missing = [name for name in (BACKBONE_FILE, LINEAR_FILE) if not (folder / name).is_file()]
    if missing:
        raise LPIPSWeightsError(
            f"{folder} needs {' and '.join(missing)} (see docs/MODEL.md, LPIPS); "
            "remove the folder to train with the structural patch loss instead"
        )
    net = LPIPS()
    backbone = _read(folder / BACKBONE_FILE)
    features = {k[len("features.") :]: v for k, v in backbone.items() if k.startswith("features.")}
    linear = _read(folder / LINEAR_FILE)
    lins = {f"{k}.weight": linear.get(f"lin{k}.model.1.weight") for k in range(len(LPIPS.CHANNELS))}
    try:
        net.features.load_state_dict(features)
        if any(v is None for v in lins.values()):
            raise RuntimeError(f"expected lin0.model.1.weight .. lin4.model.1.weight, got {sorted(linear)}")
        net.lins.load_state_dict(lins)
    except RuntimeError as exc:  # missing keys or wrong shapes: another network's weights
        raise LPIPSWeightsError(f"the LPIPS weights in {folder} do not fit the AlexNet LPIPS: {exc}") from exc
    return net.to(device)


def _read(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated zip, pickle garbage, ...: all mean "unreadable"
        raise LPIPSWeightsError(f"cannot read {path}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(state, dict):
        raise LPIPSWeightsError(f"{path} is not a state dict")
    return state
