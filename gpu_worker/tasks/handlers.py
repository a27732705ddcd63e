"""One handler per stage: inputs from storage into the worker's cache, the stage function, outputs back
to storage. Each returns the fields the job row gains (keys, report, metrics, QC). Start-up fails if a
stage of the catalogue (shared/queue/stages.py) has no handler.

A handler calls ``run.check()`` before it stores a result: an owner whose lease the reaper gave away
stops there instead of overwriting the new owner's files (the finish is fenced in the database too).
"""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
import time
from pathlib import Path

from gpu_worker.tasks.runner import StageRun
from shared.db.states import JobKind
from shared.jobs import keys
from shared.jobs.uploads import fetch_upload
from shared.queue.stages import STAGES

log = logging.getLogger(__name__)


def _folder(ctx, kind: str, entry_id: str, *parts: str) -> Path:
    """A folder of a subject's or a render's entry in the worker's cache (held by the running stage)."""
    return ctx.cache.folder(kind, entry_id, *parts)


# container -> the suffix the stored source keeps (ffmpeg reads content, not names; people read names)
SUFFIXES = {"mov": ".mp4", "matroska": ".mkv", "avi": ".avi", "mpegts": ".ts", "flv": ".flv", "asf": ".wmv"}


def subject_ingest(ctx, run: StageRun) -> dict:
    """The upload, checked again by the media layer, becomes the subject's source video in storage."""
    from gpu_worker.media.probe import probe
    from gpu_worker.preprocess.errors import ClipTooShortError

    subject = run.job
    work = _folder(ctx, "subjects", subject.id)
    local = fetch_upload(ctx.storage, _upload(ctx, subject.upload_id), work / "upload")
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
    run.check()
    ctx.storage.put_file(key, local)
    local.replace(work / Path(key).name)
    return {"source_key": key}


def _detached(ctx, model, row_id: str, what: str):
    """A row read outside the stage's own writes (detached), retried through a database outage like the
    runner's writes: an outage at a stage's start must not cost its attempt."""
    from shared.db.session import session_scope
    from shared.storage import NotFoundError
    from shared.storage.retrying import retry_transient
    from shared.transient import is_transient

    def read():
        with session_scope(ctx.engine) as s:
            row = s.get(model, row_id)
            if row is None:
                raise NotFoundError(f"The {what} {row_id} is gone.")
            s.expunge(row)
            return row

    return retry_transient(
        read, ctx.settings.transient_retry_s, f"database read of the {what}", is_transient=is_transient
    )


def _upload(ctx, upload_id: str):
    """The upload row (detached): where its file is stored."""
    from shared.db.models import Upload

    return _detached(ctx, Upload, upload_id, "upload")


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
    run.check()
    ctx.storage.upload_dir(dataset, prefix)
    report = json.loads((dataset / "report.json").read_text())
    try:
        _publish_report_images(ctx, subject, dataset)
    except Exception:  # pictures for people: a subject never fails for want of them
        log.exception("subject %s: the dataset report's pictures could not be drawn", subject.id)
    return {"dataset_key": prefix, "report": report}


def _publish_report_images(ctx, subject, dataset: Path) -> None:
    """The dashboard's report pictures, drawn once from the finished dataset."""
    from gpu_worker.preprocess.report_files import REPORT_IMAGES, report_image_key
    from gpu_worker.preprocess.report_images import write_report_images

    folder = _folder(ctx, "subjects", subject.id, "report")
    for path in write_report_images(dataset, folder):
        content_type = REPORT_IMAGES[path.name][0]
        ctx.storage.put_file(
            report_image_key(subject.tenant_id, subject.id, path.name), path, content_type=content_type
        )


# the trainer's progress message: "step 120/400 loss 0.0123 psnr 21.50 eta 1m05s" (gpu_worker/model/trainer.py)
_STEP = re.compile(r"step (\d+)/(\d+) loss ([-+0-9.eE]+|nan|inf) psnr ([-+0-9.eE]+|nan|inf)")
CURVES_EVERY_S = 2.0  # the dashboard's plots need no more than this; storage writes stay rare


class Curves:
    """Loss and PSNR per stage over steps, as the trainer reports them, published to storage (throttled)
    for the dashboard's plots. On a resumed run, points from before the checkpoint are kept."""

    def __init__(self, ctx, subject) -> None:
        from gpu_worker.preprocess.report_files import curves_key

        self.storage, self.key = ctx.storage, curves_key(subject.tenant_id, subject.id)
        self.points: list[dict] = []
        self.total = 0
        self._written = 0.0
        if self.storage.exists(self.key):
            try:
                self.points = list(json.loads(self.storage.read_bytes(self.key))["points"])
            except (ValueError, KeyError, TypeError):
                self.points = []

    def add(self, step: str, message: str) -> None:
        match = _STEP.search(message)
        if not step.startswith("train:") or match is None:
            return
        at, self.total = int(match[1]), int(match[2])
        # a resumed run reports steps again from its checkpoint: drop what it is about to redo
        self.points = [p for p in self.points if p["step"] < at]
        loss, psnr = (v if math.isfinite(v := float(match[i])) else None for i in (3, 4))
        self.points.append({"stage": step.split(":", 1)[1], "step": at, "loss": loss, "psnr": psnr})
        if time.monotonic() - self._written >= CURVES_EVERY_S or at == self.total:
            self.flush()

    def flush(self) -> None:
        body = {"points": self.points, "total_steps": self.total}
        data = json.dumps(body, allow_nan=False).encode()
        self.storage.put_bytes(self.key, data, content_type="application/json")
        self._written = time.monotonic()


def _dataset(ctx, subject) -> Path:
    folder = _folder(ctx, "subjects", subject.id) / "dataset"
    ctx.storage.sync_dir(subject.dataset_key, folder)
    return folder


def subject_train(ctx, run: StageRun) -> dict:
    """Train (resuming from the checkpoint in storage when a worker was lost), evaluate, store the model."""
    from gpu_worker.model.evaluate import evaluate
    from gpu_worker.model.loading import CHECKPOINT
    from gpu_worker.model.trainer import TrainingInterrupted, train
    from gpu_worker.tasks.runner import HandBack

    subject = run.job
    dataset = _dataset(ctx, subject)
    model = _folder(ctx, "subjects", subject.id) / "model"
    ckpt_key = keys.checkpoint_key(subject.tenant_id, subject.id)
    local_ckpt = model / CHECKPOINT
    if not local_ckpt.is_file() and ctx.storage.exists(ckpt_key):
        ctx.storage.get_file(ckpt_key, local_ckpt)
    published = {"mtime": local_ckpt.stat().st_mtime_ns if local_ckpt.is_file() else 0}
    curves = Curves(ctx, subject)

    def publish_checkpoint() -> None:
        # the trainer writes its checkpoint atomically every few hundred steps: publish each new one,
        # so a worker that dies costs at most that much training
        if local_ckpt.is_file() and local_ckpt.stat().st_mtime_ns != published["mtime"]:
            published["mtime"] = local_ckpt.stat().st_mtime_ns
            ctx.storage.put_file(ckpt_key, local_ckpt)

    def progress(step: str, fraction: float, message: str) -> None:
        curves.add(step, message)
        if run.stopping():
            return  # the trainer checkpoints and stops at the end of this step (stop_when)
        run.progress(step, 0.95 * fraction, message)  # raises when this run must stop (canceled, lost)
        publish_checkpoint()

    try:
        train(
            dataset, model, profile=subject.profile, resume=True, settings=ctx.settings, progress=progress,
            steps_scale=ctx.settings.train_steps_scale, stop_when=run.stopping,
        )  # fmt: skip
    except TrainingInterrupted:  # the worker is shutting down: keep the step just checkpointed
        publish_checkpoint()
        curves.flush()
        raise HandBack() from None
    curves.flush()
    run.progress("evaluate", 0.96, "evaluating the model")
    metrics_path = evaluate(model, settings=ctx.settings, max_frames=48)
    prefix = keys.model_prefix(subject.tenant_id, subject.id)
    staged = _folder(ctx, "subjects", subject.id) / "model-publish"
    shutil.rmtree(staged, ignore_errors=True)
    staged.mkdir()
    for name in ("model.pt", "config.json"):  # what rendering needs, not the optimizer state
        shutil.copy2(model / name, staged / name)
    run.check()
    ctx.storage.upload_dir(staged, prefix)
    ctx.storage.delete(ckpt_key)
    return {"model_key": prefix, "metrics": json.loads(Path(metrics_path).read_text())}


def render_render(ctx, run: StageRun) -> dict:
    """Speech -> a finished video and its QC, from the subject's model kept loaded between renders."""
    from gpu_worker.render.options import RenderOptions
    from gpu_worker.render.stage import Renderer
    from shared.db.models import Subject

    render = run.job
    subject = _detached(ctx, Subject, render.subject_id, "subject")

    def build() -> Renderer:
        dataset = _dataset(ctx, subject)
        model = _folder(ctx, "subjects", subject.id) / "model"
        ctx.storage.sync_dir(subject.model_key, model)
        return Renderer(model, ctx.settings, dataset=dataset, source=_source(ctx, subject))

    renderer = ctx.renderer(subject.id, build)
    work = _folder(ctx, "renders", render.id)
    if render.upload_id is not None:  # its file may be a part of a shared object
        audio = fetch_upload(ctx.storage, _upload(ctx, render.upload_id), work / "speech")
    else:
        audio = ctx.storage.get_file(render.audio_key, work / "speech")
    out = work / "video.mp4"
    options = RenderOptions(
        mode=render.mode,
        start_frame=render.start_frame,
        captions=render.captions or "on",
        language=render.language,
    )
    captions: dict = {}
    try:
        result = renderer.render(audio, out, options, run.progress)
        video_key = keys.video_key(render.tenant_id, render.id)
        run.check()
        ctx.storage.put_file(video_key, out, content_type="video/mp4")
        ctx.storage.put_bytes(keys.qc_key(render.tenant_id, render.id), json.dumps(result.qc).encode())
        if result.captions_vtt is not None:  # the SRT first: a stored VTT key means both are there
            srt_key = keys.captions_key(render.tenant_id, render.id, "srt")
            ctx.storage.put_file(srt_key, result.captions_srt, content_type="application/x-subrip")
            vtt_key = keys.captions_key(render.tenant_id, render.id, "vtt")
            ctx.storage.put_file(vtt_key, result.captions_vtt, content_type="text/vtt")
            captions = {"captions_key": vtt_key, "captions_language": result.language}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"video_key": video_key, "qc": result.qc, "duration_s": result.duration_s, **captions}


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
