"""Training the AVE towers SyncNet-style on one or many preprocessed datasets.

In-sync pairs (audio window of frame i, mouth crops i..i+4) against pairs whose audio is shifted by
3..12 frames; binary cross-entropy on the cosine similarity. Reports the sync accuracy on the
datasets' held-out (validation) frames and the offset it finds for a deliberately shifted clip.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from gpu_worker.ave.data import SyncClip, load_clip
from gpu_worker.ave.sync import offset_curve
from gpu_worker.ave.towers import AudioTower, AVEConfig, LipTower, sync_probability
from gpu_worker.model.checkpoint import save_atomic
from shared.errors import SyncTalkError

ProgressFn = Callable[[str, float, str], None]


class AVETrainingError(SyncTalkError):
    code = "ave_training"


@dataclass
class AVETrainConfig:
    """How the AVE is trained."""

    steps: int = 3000
    """Optimizer steps."""
    batch_size: int = 64
    """Pairs per step (half in sync, half shifted)."""
    lr: float = 1e-3
    """Adam learning rate."""
    min_shift: int = 3
    """Smallest shift (frames) of an out-of-sync pair."""
    max_shift: int = 12
    """Largest shift (frames) of an out-of-sync pair."""
    test_shift: int = 3
    """Shift (frames) applied to a held-out clip to check the offset search finds it."""
    max_offset: int = 7
    """Offsets searched (frames, both ways)."""
    seed: int = 0
    """Seeds the pair draws."""
    towers: AVEConfig = field(default_factory=AVEConfig)


@dataclass
class AVEResult:
    path: Path
    steps: int
    seconds: float
    heldout_accuracy: float
    heldout_pairs: int
    applied_offset: int
    found_offset: int
    confidence: float
    loss_first: float
    loss_last: float


def _pairs(
    clips: list[SyncClip], starts: list[np.ndarray], n: int, cfg: AVETrainConfig, rng: np.random.Generator
):
    """n pairs: (mel windows [n, 1, 80, 16], lips [n, 5, 32, 64], labels [n])."""
    weights = np.array([len(s) for s in starts], float)
    ci = rng.choice(len(clips), size=n, p=weights / weights.sum())
    labels = (np.arange(n) % 2 == 0).astype(np.float32)
    mels, lips = [], []
    for c, y in zip(ci, labels, strict=True):
        clip, st = clips[c], starts[c]
        i = int(st[rng.integers(len(st))])
        j = i
        if y == 0:
            shift = int(rng.integers(cfg.min_shift, cfg.max_shift + 1)) * (1 if rng.random() < 0.5 else -1)
            j = i + shift if 0 <= i + shift < clip.n_frames else i - shift
            j = int(np.clip(j, 0, clip.n_frames - 1))
        mels.append(clip.mel_window(j)[None])
        lips.append(clip.lips(i))
    return np.stack(mels), np.stack(lips), labels


def train_ave(
    datasets: Sequence[str | Path],
    out_path: str | Path,
    config: AVETrainConfig | None = None,
    *,
    device: str | torch.device | None = None,
    progress: ProgressFn | None = None,
) -> AVEResult:
    """Train the towers on the datasets' training frames; evaluate on their held-out frames; save."""
    cfg = config or AVETrainConfig()
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if not datasets:
        raise AVETrainingError("train-ave needs at least one dataset")
    clips = [load_clip(d) for d in datasets]
    train_starts = [c.valid_starts(c.train_ids) for c in clips]
    val_starts = [c.valid_starts(c.val_ids) for c in clips]
    if sum(len(s) for s in train_starts) < 8:
        raise AVETrainingError("too few usable training frames for AVE training (need 8 or more)")
    if sum(len(s) for s in val_starts) < 4:
        # tiny datasets: hold out the last tenth of the training frames instead
        val_starts = [s[-max(2, len(s) // 10) :] for s in train_starts]
        train_starts = [s[: -max(2, len(s) // 10)] for s in train_starts]
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    audio, lip = AudioTower(cfg.towers).to(dev), LipTower(cfg.towers).to(dev)
    opt = torch.optim.Adam([*audio.parameters(), *lip.parameters()], lr=cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.1 ** min(s / max(cfg.steps, 1), 1.0))
    bce = torch.nn.BCELoss()
    start = time.monotonic()
    losses: list[float] = []
    audio.train()
    lip.train()
    for step in range(cfg.steps):
        mel, lips, y = _pairs(clips, train_starts, cfg.batch_size, cfg, rng)
        p = sync_probability(audio(torch.from_numpy(mel).to(dev)), lip(torch.from_numpy(lips).to(dev)))
        loss = bce(p, torch.from_numpy(y).to(dev))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if progress and (step + 1) % 50 == 0:
            progress(
                "train-ave",
                (step + 1) / cfg.steps,
                f"step {step + 1}/{cfg.steps} loss {np.mean(losses[-50:]):.4f}",
            )

    acc, n_pairs = heldout_accuracy(audio, lip, clips, val_starts, cfg)
    applied = cfg.test_shift
    found, conf = _shift_test(audio, lip, clips, val_starts, train_starts, cfg)
    out = Path(out_path)
    save_atomic(
        {
            "kind": "ave",
            "towers": asdict(cfg.towers),
            "audio_tower": audio.state_dict(),
            "lip_tower": lip.state_dict(),
            "metrics": {"heldout_accuracy": acc, "applied_offset": applied, "found_offset": found},
            "datasets": [str(Path(d).resolve()) for d in datasets],
        },
        out,
    )
    k = max(1, min(50, len(losses) // 5))
    return AVEResult(
        path=out,
        steps=cfg.steps,
        seconds=time.monotonic() - start,
        heldout_accuracy=acc,
        heldout_pairs=n_pairs,
        applied_offset=applied,
        found_offset=found,
        confidence=conf,
        loss_first=float(np.mean(losses[:k])),
        loss_last=float(np.mean(losses[-k:])),
    )


@torch.no_grad()
def heldout_accuracy(audio, lip, clips, starts, cfg: AVETrainConfig) -> tuple[float, int]:
    """Share of held-out pairs (one in sync, one shifted, per start frame) classified right at 0.5."""
    audio.eval()
    lip.eval()
    rng = np.random.default_rng(cfg.seed + 1)
    dev = next(audio.parameters()).device
    n = 2 * sum(len(s) for s in starts)
    mel, lips, y = _pairs(clips, starts, max(n, 2), cfg, rng)
    p = (
        sync_probability(audio(torch.from_numpy(mel).to(dev)), lip(torch.from_numpy(lips).to(dev)))
        .cpu()
        .numpy()
    )
    return float(((p > 0.5) == (y > 0.5)).mean()), len(y)


def _shift_test(audio, lip, clips, val_starts, train_starts, cfg: AVETrainConfig) -> tuple[int, float]:
    """Delay one clip's audio by test_shift frames; the offset search should find +test_shift."""
    c = int(np.argmax([len(s) for s in val_starts]))
    clip = clips[c]
    # a contiguous run is needed for the offset search: the held-out block, or all frames if it is short
    ids = val_starts[c] if len(val_starts[c]) >= 4 * cfg.max_offset else np.arange(clip.n_frames - 5)
    s = cfg.test_shift
    windows = np.stack([clip.mel_window(max(int(i) - s, 0)) for i in ids])  # audio lags the video by s
    lips = np.stack([clip.lips(int(i)) for i in ids])
    curve = offset_curve(audio, lip, windows, lips, cfg.max_offset)
    return curve.best_offset, curve.confidence
