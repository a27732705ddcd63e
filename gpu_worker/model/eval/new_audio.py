"""New-audio evaluation: speech the model never heard, rendered with poses and eyes from the training
frames played ping-pong; scored by how the mouth follows the speech (and the truth's lips, where known)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gpu_worker.model import metrics as M
from gpu_worker.model.eval.context import EvalContext, save_png
from gpu_worker.model.eval.sync import MouthOpenings, ave_sync
from gpu_worker.model.render_api import audio_features_for, pingpong_indices, render_frames
from shared.errors import DatasetError

BATCH = 8
PREVIEWS = 4  # audio_KKK.png


@dataclass
class Speech:
    """The speech to render and what is known about it."""

    source: str
    samples: np.ndarray  # [S] float32, 16 kHz mono, as recorded
    features: np.ndarray  # [N, *feature_shape], with the model's encoder and level normalization
    warnings: list[str]  # what the features had to say (very quiet speech, an encoder fallen back to mel)
    truth: np.ndarray | None  # the true lip gap per frame [N'], where known


def load_speech(
    ctx: EvalContext, audio: str | Path | None, reference: str | Path | None, truth: np.ndarray | None
) -> Speech:
    """``reference``: a second preprocessed clip (its features, unless made with another level
    normalization than the model's, and its landmarks as the truth); else the ``audio`` file."""
    from gpu_worker.media.frames import load_audio
    from gpu_worker.model.dataparser import parse_dataset

    loaded = ctx.loaded
    warnings: list[str] = []
    if reference:
        ref = parse_dataset(reference, loaded.spec.resolution)
        samples = np.asarray(load_audio(ref.root / "audio.wav", rate=16000), np.float32).reshape(-1)
        feats = ref.audio_features
        if ref.audio_level != loaded.spec.audio_level:  # another normalization than the model's: redo
            feats, warnings = audio_features_for(
                loaded, samples, ctx.settings, ave_checkpoint=ctx.ave_path, n_frames=ref.frame_count
            )
        speech = Speech(str(reference), samples, feats, warnings, M.mouth_opening(ref.landmarks))
    else:
        samples = np.asarray(load_audio(Path(audio), rate=16000), np.float32).reshape(-1)
        feats, warnings = audio_features_for(loaded, samples, ctx.settings, ave_checkpoint=ctx.ave_path)
        speech = Speech(str(audio), samples, feats, warnings, truth)
    if tuple(feats.shape[1:]) != loaded.spec.feature_shape:
        raise DatasetError(
            f"audio features of shape {tuple(feats.shape[1:])} do not fit this model "
            f"({loaded.spec.feature_shape}, encoder {loaded.spec.audio_encoder})"
        )
    return speech


def sync_windows(ctx: EvalContext, speech: Speech, n: int) -> np.ndarray | None:
    """Mel windows [n, 80, 16] for the AVE: the features themselves when they are mel (no second log-mel)."""
    from gpu_worker.preprocess.audio import FEATURE_SHAPES, log_mel, mel_windows, normalize_level

    if ctx.towers is None:
        return None
    if tuple(speech.features.shape[1:]) == FEATURE_SHAPES["mel"]:
        return speech.features[:n]
    level = ctx.loaded.spec.audio_level
    return mel_windows(log_mel(normalize_level(speech.samples, level)[0]), n)


def evaluate_new_audio(
    ctx: EvalContext,
    *,
    audio: str | Path | None = None,
    reference: str | Path | None = None,
    truth: np.ndarray | None = None,
) -> dict:
    """Render new speech and measure the mouth; writes ``audio_KKK.png`` previews. ``truth``: the true
    lip gap per frame of ``audio`` (e.g. ``sync.video_lip_gap`` of its video)."""
    from gpu_worker.ave.data import crop_mouth, mouth_boxes

    info = ctx.info
    speech = load_speech(ctx, audio, reference, truth)
    n = ctx.limit(len(speech.features))
    pose_ids = pingpong_indices(info.train_ids, n)  # [n]
    torso, torso_kind = ctx.torso(pose_ids)
    boxes = mouth_boxes(info.landmarks[pose_ids])  # [n, 4]
    openings = MouthOpenings()
    crops: list[np.ndarray] = []
    frames = render_frames(
        ctx.loaded, info.poses[pose_ids], info.expression[pose_ids], speech.features[:n], ctx.plate,
        torso=torso, latent_indices=list(pose_ids), batch_size=BATCH,
    )  # fmt: skip
    with M.mouth_tracker(ctx.settings) as tracker:  # the renders' own tracker: one stream, in order
        for batch in frames:
            for j, img in enumerate(batch.images):  # img: [R, R, 3] in 0..1
                k = batch.start + j
                lms = tracker(img) if tracker is not None else None
                openings.add(lms, M.dark_mouth_opening(img, info.lips_box[pose_ids[k]]))
                crops.append(crop_mouth(img, boxes[k]))
                if k < PREVIEWS:
                    save_png(ctx.out / f"audio_{k:03d}.png", img)
            ctx.report("eval:audio", batch.start + len(batch.images), n)
    opening, measure = openings.values()
    env = M.speech_envelope(speech.samples, n)
    res = {
        "source": speech.source,
        "frames": n,
        "torso": torso_kind,
        "warnings": speech.warnings,
        "mouth_measure": measure,
        "mouth_envelope_corr": M.pearson(opening, env),
        "sync": ave_sync(ctx.towers, sync_windows(ctx, speech, n), np.stack(crops)),
    }
    res["sync_confidence"] = res["sync"]["confidence"] if res["sync"] else None
    if speech.truth is not None:
        k = min(n, len(speech.truth))
        res["lip_gap_corr_truth"] = M.pearson(opening[:k], speech.truth[:k])
        res["truth_envelope_corr"] = M.pearson(speech.truth[:k], env[:k])
    return res
