"""make_sample: the sample subject clip (subject.mp4 + speech.wav + truth.json) from a photo and a voice."""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gpu_worker.sample.errors import SampleError, SampleOptionError
from shared.settings import Settings, get_settings

FPS = 25
VIDEO_NAME, SPEECH_NAME, TRUTH_NAME = "subject.mp4", "speech.wav", "truth.json"
SIZE_RANGE = (96, 2048)
SECONDS_RANGE = (1.0, 600.0)
LIP_TOP, LIP_BOTTOM = 13, 14  # MediaPipe inner-lip centre landmarks

Progress = Callable[[str, float, str], None]


@dataclass(frozen=True)
class SampleResult:
    out_dir: Path
    video: Path  # subject.mp4: H.264 + AAC, 25 fps, size x size
    speech: Path  # speech.wav: mono 16-bit at the engine's rate
    truth: Path  # truth.json
    n_frames: int
    sample_rate: int
    seconds: float


def _check_options(seconds: float, size: int, text: str | None) -> int:
    if not SECONDS_RANGE[0] <= seconds <= SECONDS_RANGE[1]:
        raise SampleOptionError(f"--seconds must be between {SECONDS_RANGE[0]:g} and {SECONDS_RANGE[1]:g}")
    if not SIZE_RANGE[0] <= size <= SIZE_RANGE[1] or size % 2:
        raise SampleOptionError(f"--size must be an even number between {SIZE_RANGE[0]} and {SIZE_RANGE[1]}")
    if text is not None and not text.strip():
        raise SampleOptionError("--text is empty")
    return int(round(seconds * FPS))


def make_sample(
    out_dir: Path,
    *,
    seconds: float = 12.0,
    size: int = 512,
    seed: int = 0,
    text: str | None = None,
    voice: str | None = None,
    settings: Settings | None = None,
    progress: Progress | None = None,
) -> SampleResult:
    """Write ``out_dir``/subject.mp4, speech.wav and truth.json; all three appear together or not at all."""
    import cv2

    from gpu_worker.media.audio import write_wav
    from gpu_worker.media.frames import FrameWriter
    from gpu_worker.sample.animation import make_drives
    from gpu_worker.sample.geometry import euler_to_matrix
    from gpu_worker.sample.head_rig import HeadRig
    from gpu_worker.sample.paint import EyelidPainter, paint_mouth_gap
    from gpu_worker.sample.portrait import load_portrait, photo_source
    from gpu_worker.sample.speech import parse_voice, pick_text, speech_track
    from gpu_worker.sample.truth import CONVENTIONS, TRUTH_VERSION, frame_record, write_truth

    n_frames = _check_options(seconds, size, text)
    parse_voice(voice)  # an unknown voice fails before any work
    settings = settings or get_settings()
    report = progress or (lambda _s, _f, _m: None)
    out_dir = Path(out_dir).absolute()
    text = text if text is not None else pick_text(seed)

    report("speech", 0.0, "synthesizing speech")
    speech = speech_track(text, n_frames=n_frames, fps=FPS, seed=seed, voice=voice)
    report("rig", 0.05, "finding the face on the photo and building the head rig")
    portrait = load_portrait(size, settings)
    rig = HeadRig(portrait)
    eyes = EyelidPainter(portrait.image, portrait.landmarks)
    drives = make_drives(speech.samples, speech.rate, n_frames, FPS, size, rig.camera.f, seed)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.sample-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        write_wav(tmp / SPEECH_NAME, speech.samples, speech.rate)
        records = []
        lips = portrait.landmarks[[LIP_TOP, LIP_BOTTOM], :2]  # [2, 2]
        with FrameWriter(
            tmp / VIDEO_NAME, fps=FPS, size=(size, size), audio=tmp / SPEECH_NAME, settings=settings
        ) as writer:
            for i in range(n_frames):
                rot = euler_to_matrix(*drives.euler_deg[i])
                trans, opening = drives.translation[i], float(drives.mouth_open[i])
                rest = portrait.image.copy()
                eyes.paint(rest, float(drives.blink[i]))
                frame = cv2.remap(
                    rest,
                    rig.source_map(rot, trans, opening),
                    None,
                    cv2.INTER_LINEAR,
                    borderMode=cv2.BORDER_REFLECT101,
                )  # [N, N, 3]
                paint_mouth_gap(frame, rig.mouth_gap_polygon(rot, trans, opening))
                writer.write(frame)
                top = rig.move_points(lips[:1], rot, trans, opening)
                bottom = rig.move_points(lips[1:], rot, trans, opening)
                records.append(
                    frame_record(
                        i,
                        FPS,
                        opening,
                        drives.blink[i],
                        drives.euler_deg[i],
                        rot,
                        trans,
                        float(np.linalg.norm(bottom - top)),
                    )
                )
                if i % 25 == 0:
                    report("render", 0.1 + 0.85 * i / n_frames, f"frame {i + 1}/{n_frames}")
        truth = {
            "version": TRUTH_VERSION,
            "fps": FPS,
            "size": [size, size],
            "n_frames": n_frames,
            "seconds": n_frames / FPS,
            "seed": seed,
            "source": {"photo": photo_source(), "crop_xy_side": list(portrait.crop)},
            "speech": {
                "file": SPEECH_NAME,
                "sample_rate": speech.rate,
                "samples": int(speech.samples.size),
                "engine": speech.engine,
                "text": speech.text,
            },
            "camera": {
                "model": "pinhole",
                "fx": rig.camera.f,
                "fy": rig.camera.f,
                "cx": rig.camera.cx,
                "cy": rig.camera.cy,
                "rest_face_depth": rig.camera.f,
            },
            "head": {
                "pivot": [round(float(v), 5) for v in rig.pivot],
                "jaw_drop_px": round(rig.jaw_drop_px, 5),
            },
            "conventions": CONVENTIONS,
            "frames": records,
        }
        write_truth(tmp / TRUTH_NAME, truth)
        report("finish", 0.98, f"moving the clip into {out_dir}")
        _move_into_place(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    report("finish", 1.0, "done")
    return SampleResult(
        out_dir=out_dir,
        video=out_dir / VIDEO_NAME,
        speech=out_dir / SPEECH_NAME,
        truth=out_dir / TRUTH_NAME,
        n_frames=n_frames,
        sample_rate=speech.rate,
        seconds=n_frames / FPS,
    )


def _move_into_place(tmp: Path, out_dir: Path) -> None:
    """A new folder is renamed in one step; into an existing one, truth.json goes last (it marks a whole clip)."""
    if not out_dir.exists():
        os.replace(tmp, out_dir)
        return
    if not out_dir.is_dir():
        raise SampleError(f"{out_dir} exists and is not a folder")
    with contextlib.suppress(FileNotFoundError):
        (out_dir / TRUTH_NAME).unlink()  # an old truth must never describe a new video
    for name in (SPEECH_NAME, VIDEO_NAME, TRUTH_NAME):
        os.replace(tmp / name, out_dir / name)
    tmp.rmdir()
