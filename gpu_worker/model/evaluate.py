"""Evaluation (METHOD.md 5): the entry points, which load the model and write ``metrics.json``.

The measuring is in ``gpu_worker/model/eval/``, one concern per module: self-driven validation frames
(``self_driven``: reconstruction and landmark metrics, AVE sync) and new audio with poses from the
training frames (``new_audio``). Previews (render | ground truth) go beside metrics.json.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from gpu_worker.model.datamanager import DataManager
from gpu_worker.model.dataparser import parse_dataset
from gpu_worker.model.eval.context import EvalContext, EvaluationError, ProgressFn
from gpu_worker.model.eval.new_audio import evaluate_new_audio
from gpu_worker.model.eval.self_driven import evaluate_self_driven
from gpu_worker.model.eval.sync import video_lip_gap
from gpu_worker.model.render_api import load_model
from shared.settings import Settings

AVE_NOTE = "no AVE checkpoint: sync confidence not measured (train one with train-ave)"


def evaluate_model(
    model_dir: str | Path,
    settings: Settings,
    *,
    dataset: str | Path | None = None,
    audio: str | Path | None = None,
    reference: str | Path | None = None,
    truth_video: str | Path | None = None,
    ave_checkpoint: str | Path | None = None,
    out_dir: str | Path | None = None,
    max_frames: int | None = None,
    previews: int = 4,
    device: str | None = None,
    progress: ProgressFn | None = None,
) -> dict:
    """Evaluate a trained model; returns the metrics (also written to OUT/metrics.json).

    ``audio``: a speech file to render (poses from training frames, ping-pong). ``reference``: a second
    preprocessed clip of the subject: its audio drives the model and its landmarks are the truth for
    the lip-gap correlation. ``truth_video``: the video that goes with ``audio`` (its lip gap, from
    MediaPipe landmarks, is then the truth). ``ave_checkpoint`` (default MODEL_DIR/ave.pt): the towers
    for sync scores. ``max_frames`` bounds each part's frames (and the truth video's).
    """
    model_dir = Path(model_dir)
    loaded = load_model(model_dir, device)
    root = Path(dataset) if dataset else loaded.dataset
    if root is None:
        raise EvaluationError("the model does not record its dataset; pass --dataset")
    info = parse_dataset(root, loaded.spec.resolution)
    if info.frame_count != loaded.spec.n_frames:
        raise EvaluationError(
            f"dataset {root} has {info.frame_count} frames; the model was trained on {loaded.spec.n_frames}"
        )
    out = Path(out_dir) if out_dir else model_dir / "eval"
    out.mkdir(parents=True, exist_ok=True)
    ave_path = Path(ave_checkpoint) if ave_checkpoint else model_dir / "ave.pt"
    towers = None
    if ave_path.is_file():
        from gpu_worker.ave import load_towers

        towers = load_towers(ave_path)
    ctx = EvalContext(
        loaded=loaded,
        info=info,
        dm=DataManager(info, loaded.config.data, "cpu"),
        settings=settings,
        out=out,
        towers=towers,
        ave_path=ave_path if ave_path.is_file() else None,
        max_frames=max_frames,
        progress=progress,
    )
    if towers is None:
        ctx.note(AVE_NOTE)
    result: dict = {
        "model_dir": str(model_dir),
        "dataset": str(root),
        "global_step": loaded.global_step,
        "stages": loaded.stages_done,
        "resolution": info.resolution,
        "ave_checkpoint": str(ave_path) if towers else None,
        "notes": ctx.notes,  # the parts add theirs while they run
    }
    result["self_driven"] = evaluate_self_driven(ctx, previews)
    if audio or reference:
        truth = video_lip_gap(truth_video, settings, max_frames) if truth_video and not reference else None
        result["new_audio"] = evaluate_new_audio(ctx, audio=audio, reference=reference, truth=truth)
    tmp = out / ".metrics.json.tmp"
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, out / "metrics.json")
    return result


def evaluate(
    model_dir: str | Path,
    *,
    settings: Settings,
    audio: str | Path | None = None,
    truth_video: str | Path | None = None,
    reference: str | Path | None = None,
    progress: ProgressFn | None = None,
    **kwargs,
) -> Path:
    """Stage function: evaluate and return the path of metrics.json (see evaluate_model)."""
    out = Path(kwargs.pop("out_dir", None) or Path(model_dir) / "eval")
    evaluate_model(
        model_dir, settings, audio=audio, truth_video=truth_video, reference=reference, out_dir=out,
        progress=progress, **kwargs,
    )  # fmt: skip
    return out / "metrics.json"


__all__ = ["EvaluationError", "evaluate", "evaluate_model", "video_lip_gap"]
