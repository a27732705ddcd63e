"""One handler per stage: inputs from storage into the worker's cache, the stage function, outputs back
to storage. Each returns the fields the job row gains (keys, report, metrics, QC). Start-up fails if a
stage of the catalogue (shared/queue/stages.py) has no handler.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from gpu_worker.tasks.runner import StageRun
from shared.db.states import JobKind
from shared.jobs import keys
from shared.queue.stages import STAGES


def _folder(ctx, *parts: str) -> Path:
    path = ctx.cache_dir.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


# container -> the suffix the stored source keeps (ffmpeg reads content, not names; people read names)
SUFFIXES = {"mov": ".mp4", "matroska": ".mkv", "avi": ".avi", "mpegts": ".ts", "flv": ".flv", "asf": ".wmv"}


def subject_ingest(ctx, run: StageRun) -> dict:
    """The upload, checked again by the media layer, becomes the subject's source video in storage."""
    from gpu_worker.media.probe import probe
    from gpu_worker.preprocess.errors import ClipTooShortError

    subject = run.job
    work = _folder(ctx, "subjects", subject.id)
    local = ctx.storage.get_file(keys.upload_key(subject.tenant_id, subject.upload_id), work / "upload")
    run.progress("ingest", 0.5, "checking the video")
    info = probe(local, ctx.settings, require_video=True, require_audio=True)
    if info.video.duration_s < ctx.settings.min_train_seconds:
        raise ClipTooShortError(
            f"the video lasts {info.video.duration_s:.1f} s; a subject needs at least "
            f"{ctx.settings.min_train_seconds:g} s of the person talking"
        )
    formats = info.format_name.split(",")
    suffix = next((v for k, v in SUFFIXES.items() if k in formats), ".video")
    key = keys.source_key(subject.tenant_id, subject.id, suffix)
    ctx.storage.put_file(key, local)
    local.replace(work / Path(key).name)
    return {"source_key": key}


def _source(ctx, subject) -> Path:
    """The subject's source video in the cache (fetched once)."""
    work = _folder(ctx, "subjects", subject.id)
    local = work / Path(subject.source_key).name
    if not local.is_file() or local.stat().st_size != ctx.storage.size(subject.source_key):
        ctx.storage.get_file(subject.source_key, local)
    return local


def subject_preprocess(ctx, run: StageRun) -> dict:
    from gpu_worker.preprocess import run_preprocess
    from gpu_worker.render.dub import PROFILE_RESOLUTION

    subject = run.job
    video = _source(ctx, subject)
    dataset = run_preprocess(
        video, _folder(ctx, "subjects", subject.id) / "dataset", ctx.settings,
        resolution=PROFILE_RESOLUTION[subject.profile], progress=run.progress,
    )  # fmt: skip
    prefix = keys.dataset_prefix(subject.tenant_id, subject.id)
    run.progress("preprocess", 1.0, "storing the dataset")
    ctx.storage.upload_dir(dataset, prefix)
    report = json.loads((dataset / "report.json").read_text())
    return {"dataset_key": prefix, "report": report}


def _dataset(ctx, subject) -> Path:
    folder = _folder(ctx, "subjects", subject.id) / "dataset"
    ctx.storage.sync_dir(subject.dataset_key, folder)
    return folder


def subject_train(ctx, run: StageRun) -> dict:
    """Train (resuming from the checkpoint in storage when a worker was lost), evaluate, store the model."""
    from gpu_worker.model.evaluate import evaluate
    from gpu_worker.model.loading import CHECKPOINT
    from gpu_worker.model.trainer import train

    subject = run.job
    dataset = _dataset(ctx, subject)
    model = _folder(ctx, "subjects", subject.id) / "model"
    ckpt_key = keys.checkpoint_key(subject.tenant_id, subject.id)
    local_ckpt = model / CHECKPOINT
    if not local_ckpt.is_file() and ctx.storage.exists(ckpt_key):
        ctx.storage.get_file(ckpt_key, local_ckpt)
    published = {"mtime": local_ckpt.stat().st_mtime_ns if local_ckpt.is_file() else 0}

    def progress(step: str, fraction: float, message: str) -> None:
        # the trainer writes its checkpoint atomically every few hundred steps: publish each new one,
        # so a worker that dies costs at most that much training
        if local_ckpt.is_file() and local_ckpt.stat().st_mtime_ns != published["mtime"]:
            published["mtime"] = local_ckpt.stat().st_mtime_ns
            ctx.storage.put_file(ckpt_key, local_ckpt)
        run.progress(step, 0.95 * fraction, message)

    train(
        dataset, model, profile=subject.profile, resume=True, settings=ctx.settings, progress=progress,
        steps_scale=ctx.settings.train_steps_scale,
    )  # fmt: skip
    run.progress("evaluate", 0.96, "evaluating the model")
    metrics_path = evaluate(model, settings=ctx.settings, max_frames=48)
    prefix = keys.model_prefix(subject.tenant_id, subject.id)
    staged = _folder(ctx, "subjects", subject.id) / "model-publish"
    shutil.rmtree(staged, ignore_errors=True)
    staged.mkdir()
    for name in ("model.pt", "config.json"):  # what rendering needs, not the optimizer state
        shutil.copy2(model / name, staged / name)
    ctx.storage.upload_dir(staged, prefix)
    ctx.storage.delete(ckpt_key)
    return {"model_key": prefix, "metrics": json.loads(Path(metrics_path).read_text())}


def render_render(ctx, run: StageRun) -> dict:
    """Speech -> a finished video and its QC, from the subject's model kept loaded between renders."""
    from gpu_worker.render.options import RenderOptions
    from gpu_worker.render.stage import Renderer
    from shared.db.models import Subject
    from shared.db.session import session_scope

    render = run.job
    with session_scope(ctx.engine) as s:
        subject = s.get(Subject, render.subject_id)
        s.expunge(subject)

    def build() -> Renderer:
        dataset = _dataset(ctx, subject)
        model = _folder(ctx, "subjects", subject.id) / "model"
        ctx.storage.sync_dir(subject.model_key, model)
        return Renderer(model, ctx.settings, dataset=dataset, source=_source(ctx, subject))

    renderer = ctx.renderer(subject.id, build)
    work = _folder(ctx, "renders", render.id)
    audio = ctx.storage.get_file(render.audio_key, work / "speech")
    out = work / "video.mp4"
    options = RenderOptions(mode=render.mode, start_frame=render.start_frame)
    try:
        result = renderer.render(audio, out, options, run.progress)
        video_key = keys.video_key(render.tenant_id, render.id)
        ctx.storage.put_file(video_key, out, content_type="video/mp4")
        ctx.storage.put_bytes(keys.qc_key(render.tenant_id, render.id), json.dumps(result.qc).encode())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"video_key": video_key, "qc": result.qc, "duration_s": result.duration_s}


HANDLERS = {
    (JobKind.subject.value, "ingest"): subject_ingest,
    (JobKind.subject.value, "preprocess"): subject_preprocess,
    (JobKind.subject.value, "train"): subject_train,
    (JobKind.render.value, "render"): render_render,
}


def check_handlers() -> None:
    """Every stage of every job has a handler (checked when a worker starts)."""
    missing = [
        (k.value, s.name) for k, specs in STAGES.items() for s in specs if (k.value, s.name) not in HANDLERS
    ]
    if missing:
        raise RuntimeError(f"stages without a handler: {missing}")
