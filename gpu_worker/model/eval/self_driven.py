"""Self-driven evaluation: the validation frames rendered with their own pose, expression and audio
(latent: the mean of the training latents), scored against their truth."""

from __future__ import annotations

import numpy as np

from gpu_worker.model.eval.context import LANDMARKER_NOTE, EvalContext, save_png
from gpu_worker.model.eval.landmarks import landmark_pairs
from gpu_worker.model.eval.reconstruction import Reconstruction
from gpu_worker.model.eval.sync import ave_sync
from gpu_worker.model.render_api import render_frames

BATCH = 8  # frames marched together: fewer rounds per frame (GPU: overhead-bound)


def validation_ids(ctx: EvalContext) -> np.ndarray:
    """The validation frames [V] (the last 1/11 of the training frames where the split has none)."""
    info = ctx.info
    ids = info.val_ids if info.val_ids.size else info.train_ids[-max(1, len(info.train_ids) // 11) :]
    return ids[: ctx.limit(len(ids))]


def evaluate_self_driven(ctx: EvalContext, previews: int = 4) -> dict:
    """Render the validation frames and measure them; writes ``val_KKK.png`` (render | gt) previews."""
    from gpu_worker.ave.data import crop_mouth, mouth_boxes

    info, dm = ctx.info, ctx.dm
    ids = validation_ids(ctx)
    torso, torso_kind = ctx.torso(ids)
    boxes = mouth_boxes(info.landmarks[ids])  # [V, 4]: the truth's mouth boxes crop both streams
    recon = Reconstruction(with_frames=(info.root / "frames").is_dir())
    if not recon.with_frames:
        ctx.note(
            "the dataset has no frames/: psnr_frames, ssim_frames, psnr_face_frames, psnr_portrait_frames "
            "not measured"
        )
    crops: list[np.ndarray] = []  # [32, 64] uint8 each
    gt_crops: list[np.ndarray] = []
    frames = render_frames(
        ctx.loaded, info.poses[ids], info.expression[ids], info.audio_features[ids], ctx.plate,
        torso=torso, latent_indices=None, batch_size=BATCH,
    )  # fmt: skip
    with landmark_pairs(ctx.settings) as pairs:
        for batch in frames:
            for j, img in enumerate(batch.images):  # img: [R, R, 3] in 0..1
                k = batch.start + j
                i = int(ids[k])
                gt = dm.image("gt", i).numpy()
                mask = dm.image("face_mask", i).numpy()[..., :1]  # [R, R, 1] soft inner-face mask
                recon.add(img, gt, mask, dm.image("frames", i).numpy() if recon.with_frames else None)
                crops.append(crop_mouth(img, boxes[k]))
                gt_crops.append(crop_mouth(gt, boxes[k]))
                if pairs is not None:
                    pairs.add(img, gt)
                if k < previews:
                    save_png(ctx.out / f"val_{k:03d}.png", np.concatenate([img, gt], 1))
            ctx.report("eval:val", batch.start + len(batch.images), len(ids))
        landmarks = pairs.result() if pairs is not None else {"lmd_px": None, "lmd": None}
    if pairs is None:
        ctx.note(LANDMARKER_NOTE)
    res = {"frames": len(ids), "torso": torso_kind, **recon.result(), **landmarks}
    mel_path = info.root / "mel.npy"
    if mel_path.exists():
        from gpu_worker.preprocess.audio import mel_windows

        windows = mel_windows(np.load(mel_path), info.frame_count)[ids]  # [V, 80, 16]
        res["sync"] = ave_sync(ctx.towers, windows, np.stack(crops))
        res["sync_confidence"] = res["sync"]["confidence"] if res["sync"] else None
        res["sync_ground_truth"] = ave_sync(ctx.towers, windows, np.stack(gt_crops))
    return res
