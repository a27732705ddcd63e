"""Helpers of the preprocessing tests: settings that accept short clips, clips and tones, a tiny HuBERT.

A module of its own (not conftest.py): every tests folder has a conftest, and `from conftest import`
finds whichever of them was imported last."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from shared.settings import Settings

REPO = Path(__file__).resolve().parents[2]
SHARED_MODELS = REPO.parent / "shared" / "models"


def tiny_settings(tmp: Path, **overrides) -> Settings:
    """Test settings that accept short clips (the real minimum is 10 s)."""
    import os

    return Settings(
        environment="test",
        data_dir=tmp / "data",
        model_dir=tmp / "models",
        model_sources=os.environ.get("SYNCTALK_MODEL_SOURCES") or str(SHARED_MODELS),
        model_download=False,
        min_train_seconds=overrides.pop("min_train_seconds", 2.0),
        **overrides,
    )


def write_clip(path: Path, frames: list[np.ndarray], settings: Settings, audio: Path | None = None) -> Path:
    from gpu_worker.media.frames import FrameWriter

    h, w = frames[0].shape[:2]
    with FrameWriter(path, fps=25, size=(w, h), audio=audio, settings=settings) as writer:
        for f in frames:
            writer.write(f)
    return path


def write_tone(path: Path, seconds: float, amp: float = 0.3, rate: int = 16000) -> Path:
    from gpu_worker.media.audio import write_wav

    t = np.arange(int(seconds * rate)) / rate
    return write_wav(path, amp * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t)) / 2, rate)


TINY_HUBERT_HIDDEN = 32


def save_tiny_hubert(folder):
    """A 2-layer HuBERT with hidden size 32 and the real 20 ms convolutional front end (narrow)."""
    import torch
    from transformers import HubertConfig, HubertModel

    torch.manual_seed(0)
    config = HubertConfig(
        hidden_size=TINY_HUBERT_HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(16,) * 7,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
    )
    HubertModel(config).save_pretrained(folder)
    return folder
