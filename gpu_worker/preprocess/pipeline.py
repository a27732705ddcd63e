"""``run_preprocess``: one subject video in, one training dataset folder out (METHOD.md section 1).

Steps, each resumable (see step_cache): probe -> track (pass 1: face track, crop) -> analyze (pass 2:
crop frames, landmarks) -> face (gaps, expression) -> parse (labels, masks, plate, keypoint tracks) ->
targets (gt, torso) -> stabilize (pose, bundle adjustment) -> audio (wav, mel, features) -> publish.
Everything is written into a hidden staging folder beside ``out_dir`` that is renamed into place only
when complete, so a failed or interrupted run never leaves a half-written dataset at ``out_dir``.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from gpu_worker.preprocess import audio as audio_mod
from gpu_worker.preprocess.errors import AudioEncoderError, ClipTooShortError
from gpu_worker.preprocess.step_cache import STEPS_DIR, chain_key, file_digest, write_json_atomic
from shared.errors import DatasetError, SyncTalkError
from shared.settings import Settings

Progress = Callable[[str, float, str], None]
FPS = 25
CODE_VERSION = 2  # bump when a step's output changes meaning: cached steps are then redone
WORK = ".work"  # intermediate files inside the staging folder, removed before publishing


def _staging_dir(out_dir: Path) -> Path:
    return out_dir.with_name(f".{out_dir.name}.partial")


def run_preprocess(
    video: Path,
    out_dir: Path,
    settings: Settings,
    *,
    resolution: int = 512,
    audio_encoder: str | None = None,
    ave_checkpoint: Path | None = None,
    progress: Progress | None = None,
) -> Path:
    """Turn a subject video into a dataset folder at ``out_dir`` (returned). Raises SyncTalkError
    subclasses for bad input; reruns skip the steps whose inputs and settings did not change.
    ``audio_encoder`` None: the encoder of the dataset already at ``out_dir`` (a subject made with
    ``mel`` stays ``mel``, so its trained model keeps fitting), else ``audio.DEFAULT_ENCODER``."""
    from gpu_worker.preprocess.steps import StepRunner

    video, out_dir = Path(video).absolute(), Path(out_dir).absolute()
    audio_encoder = audio_encoder or _published_encoder(out_dir) or audio_mod.DEFAULT_ENCODER
    if audio_encoder not in audio_mod.ENCODERS:
        raise AudioEncoderError(
            f"unknown audio encoder {audio_encoder!r}; choose one of {', '.join(audio_mod.ENCODERS)}"
        )
    # Missing encoder weights fail now, not after minutes of video work.
    if audio_encoder == "hubert":
        from gpu_worker.preprocess.hubert import check_hubert_dir, hubert_dir

        check_hubert_dir(hubert_dir(settings))
    if audio_encoder == "whisper":
        _check_whisper(settings)
    if audio_encoder == "ave" and ave_checkpoint is not None and not Path(ave_checkpoint).is_file():
        raise AudioEncoderError(f"AVE checkpoint not found: {ave_checkpoint}")
    if resolution < 64 or resolution > 2048 or resolution % 2:
        raise DatasetError(
            f"resolution must be an even number of pixels between 64 and 2048, got {resolution}"
        )
    if out_dir.exists() and not (out_dir / "manifest.json").is_file():
        if any(out_dir.iterdir()):
            raise DatasetError(f"{out_dir} exists and is not a dataset: refusing to replace it")
        out_dir.rmdir()
    notify = progress or (lambda step, fraction, message: None)

    from gpu_worker.media.probe import probe

    info = probe(video, settings, require_video=True, require_audio=True)
    if info.video.duration_s < settings.min_train_seconds:
        raise ClipTooShortError(
            f"the clip lasts {info.video.duration_s:.1f} s; at least {settings.min_train_seconds:g} s are needed to train"
        )
    base = chain_key(
        "",
        "source",
        {
            "digest": file_digest(video),
            "code": CODE_VERSION,
            "resolution": resolution,
            "face_gap_max_s": settings.face_gap_max_s,
            "max_unusable_fraction": settings.max_unusable_fraction,
            "min_train_seconds": settings.min_train_seconds,
        },
    )
    weights_id = audio_mod.encoder_weights_id(audio_encoder, settings, ave_checkpoint)
    keys = StepRunner.step_keys(base, audio_encoder, weights_id)
    # the last step's chained key: it changes with anything any step depends on (its parameters too)
    final_key = chain_key(
        keys["audio"],
        "features",
        {"encoder": audio_encoder, "weights": weights_id},
    )
    published: frozenset[str] = frozenset()
    staging = _staging_dir(out_dir)
    if (out_dir / "manifest.json").is_file():
        try:
            old = json.loads((out_dir / "manifest.json").read_text())
        except ValueError:
            old = {}
        if old.get("cache_key") == final_key:
            notify("done", 1.0, "dataset already up to date")
            return out_dir
        same = [name for name, key in old.get("step_keys", {}).items() if keys.get(name) == key]
        redo = set(keys) - set(same)
        # a published dataset has no intermediates (.work): only steps that read none can be redone on it
        if same and redo <= StepRunner.NO_INTERMEDIATES and (out_dir / STEPS_DIR).is_dir():
            # Only later steps changed (typically the audio encoder): start from a hard-linked copy of
            # the published dataset and redo just those; the published files are never written to
            # (every write replaces a file by rename), so the old dataset stays intact until the swap.
            shutil.rmtree(staging, ignore_errors=True)
            shutil.copytree(out_dir, staging, copy_function=_link_or_copy)
            published = frozenset(same)
    staging.mkdir(parents=True, exist_ok=True)
    runner = StepRunner(video, info, staging, settings, resolution, notify)
    try:
        runner.run_all(base, audio_encoder, ave_checkpoint, weights_id=weights_id, published=published)
    except SyncTalkError:
        # Bad input: a rerun cannot do better, so nothing is kept. Any other failure (a crash, an
        # interrupt) keeps the finished steps in the staging folder for the rerun to resume from.
        shutil.rmtree(staging, ignore_errors=True)
        raise
    write_json_atomic(staging / "report.json", runner.report())
    manifest = runner.manifest(final_key)
    write_json_atomic(staging / "manifest.json", manifest)
    _publish(staging, out_dir)
    notify("done", 1.0, f"dataset written to {out_dir}")
    return out_dir


def _published_encoder(out_dir: Path) -> str | None:
    """The audio encoder of the dataset published at ``out_dir``, or None."""
    try:
        encoder = json.loads((out_dir / "manifest.json").read_text()).get("audio_encoder")
    except (OSError, ValueError):
        return None
    return encoder if encoder in audio_mod.ENCODERS else None


def _check_whisper(settings: Settings) -> None:
    """AudioEncoderError unless the Whisper model files are there (``synctalk models fetch``)."""
    from shared.model_files.manager import whisper_model_dir

    try:
        folder = whisper_model_dir(settings)
    except SyncTalkError as exc:
        raise AudioEncoderError(
            f"the whisper audio encoder needs its model files ({exc}); run `synctalk models fetch` "
            "or use --audio-encoder mel"
        ) from exc
    if not (folder / "model.bin").is_file():
        raise AudioEncoderError(
            f"the whisper audio encoder needs {folder / 'model.bin'}: run `synctalk models fetch` "
            "or use --audio-encoder mel"
        )


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # a filesystem without hard links
        shutil.copy2(src, dst)


def _publish(staging: Path, out_dir: Path) -> None:
    """Drop the intermediates and rename the staging folder into place (replacing an old dataset). The
    step records (``.steps/``, a few hundred bytes each) stay, so a later run that changes only the
    audio encoder redoes only the audio step."""
    shutil.rmtree(staging / WORK, ignore_errors=True)
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out_dir, old)
        os.replace(staging, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, out_dir)


__all__ = ["FPS", "WORK", "Progress", "run_preprocess"]
