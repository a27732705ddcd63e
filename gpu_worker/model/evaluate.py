"""Evaluation (METHOD.md 5): self-driven validation frames, and new audio with poses from training frames.

Writes ``metrics.json`` and a few preview images (render | ground truth) into the output folder.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from gpu_worker.model import metrics as M
from gpu_worker.model.datamanager import DataManager
from gpu_worker.model.dataparser import DatasetError, DatasetInfo, parse_dataset
from gpu_worker.model.render_api import (
    LoadedModel,
    audio_features_for,
    load_model,
    pingpong_indices,
    render_frames,
)
from shared.errors import SyncTalkError
from shared.settings import Settings

ProgressFn = Callable[[str, float, str], None]


class EvaluationError(SyncTalkError):
    code = "evaluation_failed"


def _save_png(path: Path, img: np.ndarray) -> None:
    import cv2

    cv2.imwrite(str(path), (np.clip(img, 0, 1) * 255).astype(np.uint8)[..., ::-1])


def _lip_stacks(crops: np.ndarray) -> np.ndarray:
    """Per-frame crops [F, 32, 64] uint8 -> 5-frame stacks [F, 5, 32, 64] float (clamped at the end)."""
    n = len(crops)
    idx = np.minimum(np.arange(n)[:, None] + np.arange(5)[None], n - 1)
    return crops[idx].astype(np.float32) / 255.0


def _sync(towers, windows: np.ndarray, crops: np.ndarray) -> dict | None:
    if towers is None or len(crops) < 8:
        return None
    from gpu_worker.ave.sync import offset_curve

    curve = offset_curve(*towers, windows, _lip_stacks(crops), max_offset=min(7, len(crops) // 4))
    return {"confidence": curve.confidence, "best_offset": curve.best_offset, "score_at_0": curve.at_zero}


class _Openings:
    """Mouth opening per frame: MediaPipe landmarks where found on (almost) every frame, else dark pixels."""

    def __init__(self) -> None:
        self.landmarks: list[np.ndarray | None] = []
        self.dark: list[float] = []

    def add(self, lms: np.ndarray | None, dark: float) -> None:
        self.landmarks.append(lms)
        self.dark.append(dark)

    def values(self) -> tuple[np.ndarray, str]:
        found = [lm is not None for lm in self.landmarks]
        if found and np.mean(found) >= 0.9:
            idx = np.flatnonzero(found)
            vals = M.mouth_opening(np.stack([self.landmarks[i] for i in idx]))
            return np.interp(np.arange(len(found)), idx, vals), "landmarks"
        return np.asarray(self.dark), "dark_pixels"


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
    MediaPipe landmarks, is then the truth). ``ave_checkpoint`` (default MODEL_DIR/ave.pt): the towers for sync scores.
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
    dm = DataManager(info, loaded.config.data, "cpu")
    result: dict = {
        "model_dir": str(model_dir),
        "dataset": str(root),
        "global_step": loaded.global_step,
        "stages": loaded.stages_done,
        "resolution": info.resolution,
        "ave_checkpoint": str(ave_path) if towers else None,
        "notes": [],
    }
    if towers is None:
        result["notes"].append("no AVE checkpoint: sync confidence not measured (train one with train-ave)")
    with M.mouth_tracker(settings) as tracker:
        result["self_driven"] = _self_driven(
            loaded, info, dm, towers, tracker, out, max_frames, previews, progress
        )
        if audio or reference:
            truth = (
                video_lip_gap(truth_video, settings, max_frames) if truth_video and not reference else None
            )
            result["new_audio"] = _new_audio(
                loaded, info, dm, towers, tracker, settings, audio, reference, ave_path, out, max_frames, progress,
                truth=truth,
            )  # fmt: skip
        if tracker is None:
            result["notes"].append("face landmarker unavailable: LMD not measured")
    tmp = out / ".metrics.json.tmp"
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, out / "metrics.json")
    return result


def _self_driven(
    loaded: LoadedModel,
    info: DatasetInfo,
    dm: DataManager,
    towers,
    tracker,
    out,
    max_frames,
    previews,
    progress,
) -> dict:
    from gpu_worker.ave.data import crop_mouth, mouth_boxes

    ids = info.val_ids if info.val_ids.size else info.train_ids[-max(1, len(info.train_ids) // 11) :]
    ids = ids[:max_frames] if max_frames else ids
    torso = None if loaded.has_torso else (lambda k: dm.image("torso", int(ids[k])))
    boxes = mouth_boxes(info.landmarks[ids])
    psnrs, ssims, portrait, pred_lms, gt_lms, crops, gt_crops = [], [], [], [], [], [], []
    frames = render_frames(
        loaded,
        info.poses[ids],
        info.expression[ids],
        info.audio_features[ids],
        dm.background.numpy(),
        torso=torso,
        latent_indices=None,
        batch_size=8,  # frames marched together: fewer rounds per frame (GPU: overhead-bound)
    )
    for batch in frames:
        for j, img in enumerate(batch.images):
            k = batch.start + j
            gt = dm.image("gt", int(ids[k])).numpy()
            psnrs.append(M.psnr(img, gt))
            # Portrait-Sync blend (METHOD.md 2): the render inside the soft inner-face mask, the
            # frame elsewhere; what the dubbing output shows (the paper reports both PSNRs)
            mask = dm.image("face_mask", int(ids[k])).numpy()[..., :1]  # [R, R, 1]
            portrait.append(M.psnr(mask * img + (1 - mask) * gt, gt))
            ssims.append(M.ssim(img, gt))
            crops.append(crop_mouth(img, boxes[k]))
            gt_crops.append(crop_mouth(gt, boxes[k]))
            if tracker is not None:
                p, g = tracker(img), tracker(gt)
                if p is not None and g is not None:
                    pred_lms.append(p)
                    gt_lms.append(g)
            if k < previews:
                _save_png(out / f"val_{k:03d}.png", np.concatenate([img, gt], 1))
        if progress:
            progress(
                "eval:val",
                min(1.0, (batch.start + len(batch.images)) / len(ids)),
                f"{batch.start + len(batch.images)}/{len(ids)} frames",
            )
    mel_path = info.root / "mel.npy"
    res = {
        "frames": len(ids),
        "psnr": float(np.mean(psnrs)),
        "psnr_portrait": float(np.mean(portrait)),
        "ssim": float(np.mean(ssims)),
        "lmd_px": None,
        "lmd": None,
    }
    if pred_lms:
        res["lmd_px"], res["lmd"] = M.lmd(np.stack(pred_lms), np.stack(gt_lms))
        res["lmd_frames"] = len(pred_lms)
        res.update(M.eye_agreement(np.stack(pred_lms), np.stack(gt_lms)))
    if mel_path.exists():
        from gpu_worker.preprocess.audio import mel_windows

        windows = mel_windows(np.load(mel_path), info.frame_count)[ids]
        res["sync"] = _sync(towers, windows, np.stack(crops))
        res["sync_confidence"] = res["sync"]["confidence"] if res["sync"] else None
        res["sync_ground_truth"] = _sync(towers, windows, np.stack(gt_crops))
    return res


def _new_audio(
    loaded,
    info: DatasetInfo,
    dm: DataManager,
    towers,
    tracker,
    settings,
    audio,
    reference,
    ave_path,
    out,
    max_frames,
    progress,
    *,
    truth: np.ndarray | None = None,
) -> dict:
    from gpu_worker.ave.data import crop_mouth, mouth_boxes
    from gpu_worker.media.frames import load_audio
    from gpu_worker.preprocess.audio import FEATURE_SHAPES, log_mel, mel_windows, normalize_level

    level = loaded.spec.audio_level  # new audio gets the level normalization the model was trained with
    ave = ave_path if ave_path.is_file() else None
    warnings: list[str] = []  # from the features (very quiet speech, an encoder fallen back to mel)
    if reference:
        ref = parse_dataset(reference, loaded.spec.resolution)
        samples = np.asarray(load_audio(ref.root / "audio.wav", rate=16000), np.float32).reshape(-1)
        feats = ref.audio_features
        if ref.audio_level != level:  # made with another normalization than the model's: redo them
            feats, warnings = audio_features_for(
                loaded, samples, settings, ave_checkpoint=ave, n_frames=ref.frame_count
            )
        truth = M.mouth_opening(ref.landmarks)
        source = str(reference)
    else:
        samples = np.asarray(load_audio(Path(audio), rate=16000), np.float32).reshape(-1)
        feats, warnings = audio_features_for(loaded, samples, settings, ave_checkpoint=ave)
        source = str(audio)
    if tuple(feats.shape[1:]) != loaded.spec.feature_shape:
        raise DatasetError(
            f"audio features of shape {tuple(feats.shape[1:])} do not fit this model ({loaded.spec.feature_shape}, "
            f"encoder {loaded.spec.audio_encoder})"
        )
    n = len(feats) if not max_frames else min(len(feats), max_frames)
    pose_ids = pingpong_indices(info.train_ids, n)
    torso = None if loaded.has_torso else (lambda k: dm.image("torso", int(pose_ids[k])))
    boxes = mouth_boxes(info.landmarks[pose_ids])
    openings = _Openings()
    crops = []
    frames = render_frames(
        loaded, info.poses[pose_ids], info.expression[pose_ids], feats[:n], dm.background.numpy(),
        torso=torso, latent_indices=list(pose_ids), batch_size=8,
    )  # fmt: skip
    for batch in frames:
        for j, img in enumerate(batch.images):
            k = batch.start + j
            openings.add(
                tracker(img) if tracker is not None else None,
                M.dark_mouth_opening(img, info.lips_box[pose_ids[k]]),
            )
            crops.append(crop_mouth(img, boxes[k]))
            if k < 4:
                _save_png(out / f"audio_{k:03d}.png", img)
        if progress:
            progress(
                "eval:audio",
                min(1.0, (batch.start + len(batch.images)) / n),
                f"{batch.start + len(batch.images)}/{n} frames",
            )
    opening, measure = openings.values()
    env = M.speech_envelope(samples, n)
    sync_windows = None
    if towers is not None:  # the AVE scores mel windows: the features themselves when they are mel
        mel_shape = tuple(feats.shape[1:]) == FEATURE_SHAPES["mel"]
        sync_windows = feats[:n] if mel_shape else mel_windows(log_mel(normalize_level(samples, level)[0]), n)
    res = {
        "source": source,
        "frames": n,
        "warnings": warnings,
        "mouth_measure": measure,
        "mouth_envelope_corr": M.pearson(opening, env),
        "sync": _sync(towers, sync_windows, np.stack(crops)),
    }
    res["sync_confidence"] = res["sync"]["confidence"] if res["sync"] else None
    if truth is not None:
        k = min(n, len(truth))
        res["lip_gap_corr_truth"] = M.pearson(opening[:k], truth[:k])
        res["truth_envelope_corr"] = M.pearson(truth[:k], env[:k])
    return res


def video_lip_gap(video: str | Path, settings: Settings, max_frames: int | None = None) -> np.ndarray:
    """Inner-lip gap / eye distance per frame of a video at 25 fps (MediaPipe), gaps interpolated [F]."""
    from gpu_worker.media.frames import FrameReader

    values: list[float] = []
    with M.mouth_tracker(settings) as tracker:
        if tracker is None:
            raise EvaluationError("the face landmarker is needed to measure the truth video's lips")
        with FrameReader(video, fps=25, settings=settings) as reader:
            for k, frame in enumerate(reader):
                if max_frames is not None and k >= max_frames:
                    break
                lms = tracker(frame)
                values.append(float(M.mouth_opening(lms[None])[0]) if lms is not None else np.nan)
    arr = np.asarray(values)
    ok = np.isfinite(arr)
    if not ok.any():
        raise EvaluationError(f"no face found in the truth video {video}")
    return np.interp(np.arange(arr.size), np.flatnonzero(ok), arr[ok])


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
