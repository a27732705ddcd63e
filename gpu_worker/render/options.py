"""What a render is asked to do (``RenderOptions``) and what it hands back (``RenderResult``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from shared.errors import SyncTalkError

MODES = ("fullframe", "portrait", "crop")
CAPTIONS = ("on", "off", "burn")


class RenderError(SyncTalkError):
    """A render cannot run: bad options, a subject without what the mode needs, a source that does not fit."""

    code = "render_failed"


class SourceVideoError(RenderError):
    """The subject's source video is missing or is not the one the subject was learnt from."""

    code = "source_video"


@dataclass
class RenderOptions:
    """How to render one speech track. Every field has a default; the CLI and the API fill a few."""

    mode: str = "fullframe"
    """``fullframe``: pasted back into the source video at its size and frame rate; ``portrait``: the face
    blended into the real crop (the dataset's frames, 25 fps); ``crop``: the model's own square crop."""
    start_frame: int = 0
    """The subject's frame (dataset index, 25 fps) the driving walk starts from."""
    batch_size: int = 8
    """Frames marched together by the head renderer (fewer rounds per frame)."""
    crf: int = 18
    """H.264 quality (lower is better and bigger)."""
    preset: str = "veryfast"
    """x264 preset: speed against file size at the same quality (encoding must not dominate on a CPU)."""
    qc: bool = True
    """Run the quality checks (face landmarks on every frame) and write OUT.qc.json."""
    captions: str = "on"
    """``on``: OUT.vtt and OUT.srt beside the video; ``burn``: those, and the captions drawn into the
    video; ``off``: no caption files (the QC still transcribes the speech for its word checks)."""
    language: str | None = None
    """The speech's language (a Whisper code); None: detected."""

    def check(self) -> None:
        if self.mode not in MODES:
            raise RenderError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.start_frame < 0:
            raise RenderError(f"start_frame must be 0 or more, got {self.start_frame}")
        if self.batch_size < 1:
            raise RenderError(f"batch_size must be at least 1, got {self.batch_size}")
        if not 0 <= self.crf <= 51:
            raise RenderError(f"crf must be between 0 and 51, got {self.crf}")
        if self.captions not in CAPTIONS:
            raise RenderError(f"captions must be one of {', '.join(CAPTIONS)}, got {self.captions!r}")
        from shared.languages import check_language

        try:
            self.language = check_language(self.language)
        except ValueError as exc:
            raise RenderError(str(exc)) from None


@dataclass
class RenderResult:
    """One finished render: the video, its quality checks and what it cost."""

    video: Path
    qc_path: Path | None
    qc: dict
    mode: str
    frames: int
    fps: str  # the output's frame rate as a fraction, e.g. "30000/1001"
    width: int
    height: int
    duration_s: float
    seconds: float
    timings: dict[str, float] = field(default_factory=dict)  # seconds per part: features, head, compose, ...
    captions_vtt: Path | None = None  # OUT.vtt and OUT.srt beside the video (None: captions off)
    captions_srt: Path | None = None
    language: str | None = None  # the captions' language: the one asked for, or detected

    def to_dict(self) -> dict:
        d = asdict(self)
        d["video"] = str(self.video)
        d["qc_path"] = str(self.qc_path) if self.qc_path else None
        for name in ("captions_vtt", "captions_srt"):
            d[name] = str(d[name]) if d[name] else None
        return d
