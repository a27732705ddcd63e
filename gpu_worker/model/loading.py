"""A trained model's files, device choice and loading: what training writes and inference reads.

Training (``trainer.py``) writes ``MODEL_DIR/model.pt``; evaluation, the frame API and the render stage
load it through ``load_model``. Nothing here imports the trainer, so inference never pulls in training.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from gpu_worker.model.checkpoint import CheckpointError, load_checkpoint
from gpu_worker.model.config import RunConfig, config_from_dict
from gpu_worker.model.model import ModelSpec, SyncTalkModel

FINAL = "model.pt"  # EMA weights + spec, written at the end of every stage: what inference loads
CHECKPOINT = "checkpoints/last.pt"  # everything needed to resume training
AVE_FILE = "ave.pt"  # an AVE checkpoint beside the model: sync scores in evaluation and render QC


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """The device asked for, else CUDA where available, else the CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class LoadedModel:
    model: SyncTalkModel  # EMA weights, eval mode
    config: RunConfig
    spec: ModelSpec
    device: torch.device
    stages_done: list[str]
    dataset: Path | None
    global_step: int
    model_dir: Path | None = None

    @property
    def has_torso(self) -> bool:
        return "torso" in self.stages_done


# Weights added to the model after models were trained without them, whose initial values leave the
# output exactly as it was: a model file that lacks them renders as it did when it was trained.
NEUTRAL_ADDITIONS = (
    "torso.audio_proj.weight",  # zero: the torso ignores the audio (before 2026-11-27)
    "torso.audio_proj.bias",
    "field.exp_mean",  # 0 and 1: the expression enters as it is (before 2026-11-27)
    "field.exp_std",
)


def with_neutral_additions(state: dict, model: torch.nn.Module) -> dict:
    """``state`` with any missing NEUTRAL_ADDITIONS taken from the fresh ``model`` (their neutral init)."""
    missing = [k for k in NEUTRAL_ADDITIONS if k not in state]
    if not missing:
        return state
    fresh = model.state_dict()
    return {**state, **{k: fresh[k] for k in missing}}


def load_model(model_dir: str | Path, device: str | torch.device | None = None) -> LoadedModel:
    """Load MODEL_DIR/model.pt (the EMA weights written at the end of each stage), in eval mode."""
    path = Path(model_dir) / FINAL
    dev = pick_device(device)
    payload = load_checkpoint(path, dev)
    try:
        config = config_from_dict(payload["config"])
        spec = ModelSpec.from_dict(payload["spec"])
        model = SyncTalkModel(config, spec).to(dev)
        model.load_state_dict(with_neutral_additions(payload["model"], model))
    except (KeyError, RuntimeError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path} does not match this model code: {exc}") from exc
    model.eval()
    ds = payload.get("dataset")
    return LoadedModel(
        model=model,
        config=config,
        spec=spec,
        device=dev,
        stages_done=list(payload.get("stages_done", [])),
        dataset=Path(ds) if ds else None,
        global_step=int(payload.get("global_step", 0)),
        model_dir=Path(model_dir),
    )
