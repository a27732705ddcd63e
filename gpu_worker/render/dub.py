"""``dub``: the whole chain on one machine: a subject video and a speech track in, the dubbed video out.

video -> dataset (preprocess) -> model (train head, lips, torso) -> render (fullframe by default).
Every stage keeps its work in a folder (``work``, by default beside the output), so a rerun reuses what
is finished: preprocessing skips its cached steps, training resumes from its last checkpoint (or does
nothing when the model is complete), and only the render is done again. Inputs are checked before any
of it starts: a clip too short to learn from, a speech file without audio, are refused in seconds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gpu_worker.preprocess.errors import ClipTooShortError
from gpu_worker.render.options import RenderError, RenderOptions, RenderResult
from shared.settings import Settings

ProgressFn = Callable[[str, float, str], None]
# The dataset's crop size for each training profile: what the profile trains at, or twice it (preview
# trains at 128 px and blends into a 256 px crop).
PROFILE_RESOLUTION = {"tiny": 64, "preview": 256, "standard": 512}


@dataclass
class DubResult:
    dataset: Path
    model: Path
    render: RenderResult


def work_dir_for(out: Path) -> Path:
    """Where ``dub`` keeps the dataset and the model by default: OUT's name + ``.dub`` beside it."""
    return out.with_name(out.stem + ".dub")


def check_inputs(video: Path, audio: Path, settings: Settings) -> None:
    """Refuse up front what would fail after minutes of work: unusable media, a clip too short to learn."""
    from gpu_worker.media.probe import probe

    info = probe(video, settings, require_video=True, require_audio=True)
    if info.video.duration_s < settings.min_train_seconds:
        raise ClipTooShortError(
            f"{video.name} lasts {info.video.duration_s:.1f} s; a subject needs at least "
            f"{settings.min_train_seconds:g} s of the person talking to learn from (3 to 10 minutes is best)"
        )
    probe(audio, settings, require_video=False, require_audio=True)


def _claim(work: Path, video: Path) -> None:
    """Record which video the work folder learns from; refuse to mix another video's model into it."""
    import json

    from gpu_worker.preprocess.step_cache import file_digest, write_json_atomic

    digest = file_digest(video)
    record = work / "subject.json"
    if record.is_file():
        known = json.loads(record.read_text()).get("digest")
        if known != digest:
            raise RenderError(
                f"{work} holds the model of another video; pass another --work folder (or delete it)"
            )
        return
    work.mkdir(parents=True, exist_ok=True)
    write_json_atomic(record, {"video": str(video), "digest": digest})


def dub(
    video: str | Path,
    audio: str | Path,
    out: str | Path,
    settings: Settings,
    *,
    profile: str = "preview",
    work: str | Path | None = None,
    options: RenderOptions | None = None,
    device: str | None = None,
    progress: ProgressFn | None = None,
) -> DubResult:
    """Preprocess, train and render (see the module docstring); returns where each result is."""
    from gpu_worker.model.config import PROFILES
    from gpu_worker.model.trainer import train
    from gpu_worker.preprocess import run_preprocess
    from gpu_worker.render.stage import OUTPUT_SUFFIXES, render

    video, audio, out = Path(video).absolute(), Path(audio).absolute(), Path(out).absolute()
    if profile not in PROFILES:
        raise RenderError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
    if out.suffix.lower() not in OUTPUT_SUFFIXES:
        raise RenderError(f"the output must be an .mp4 (or .mov) file, got {out.name}")
    options = options or RenderOptions()
    options.check()
    check_inputs(video, audio, settings)
    work = Path(work).absolute() if work else work_dir_for(out)
    _claim(work, video)
    notify = progress or (lambda step, fraction, message: None)

    dataset = run_preprocess(
        video, work / "dataset", settings, resolution=PROFILE_RESOLUTION[profile],
        progress=lambda step, f, msg: notify(f"preprocess:{step}", f, msg),
    )  # fmt: skip
    model = work / "model"
    train(dataset, model, profile=profile, resume=True, settings=settings, device=device, progress=notify)
    result = render(model, audio, out, options, settings, notify, source=video)
    return DubResult(dataset=dataset, model=model, render=result)
