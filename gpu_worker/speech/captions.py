"""Captions of a render's speech: Whisper's words with their timings -> cues -> WebVTT and SRT.

``transcribe(wav, settings, language)`` runs the process's shared Whisper model (``whisper.load``: one
load per worker) with word timestamps; the language is the one asked for, or detected and reported with
Whisper's probability. ``build_cues`` groups the words into cues a viewer can read: at most 2 lines of
at most 42 characters, at most ~6 s, split at word boundaries, at pauses and after a sentence's end.
``to_vtt`` / ``to_srt`` write them with each format's time stamps and the text escaped for the format
(no ``-->`` and no markup can come from the speech). ``burn_in`` draws them into a video with
ffmpeg's ``subtitles`` filter from a local temporary file (docs/RENDER.md, "Captions").
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from shared.languages import check_language

MAX_LINE_CHARS = 42  # per line (the common broadcast / web limit)
MAX_LINES = 2
MAX_CUE_S = 6.0  # a cue is split before it would last longer than this
PAUSE_S = 0.6  # a silence this long between two words ends a cue
SENTENCE_MIN_S = 1.0  # a sentence's end ends a cue that has lasted this long
MIN_CUE_S = 0.8  # a short cue is held this long where the next one leaves room
SENTENCE_END = (".", "?", "!", "。", "？", "！", "…")


@dataclass
class Word:
    start: float
    end: float
    text: str  # without the leading space Whisper gives
    probability: float = 1.0


@dataclass
class Cue:
    start: float
    end: float
    lines: list[str]


@dataclass
class Captions:
    language: str | None
    language_probability: float | None  # None when the language was given, not detected
    words: list[Word] = field(default_factory=list)
    cues: list[Cue] = field(default_factory=list)

    def summary(self) -> dict:
        """What the QC report says of the captions (no text: it is the speech's content)."""
        return {
            "language": self.language,
            "language_probability": None
            if self.language_probability is None
            else round(self.language_probability, 3),
            "words": len(self.words),
            "cues": len(self.cues),
        }

    def word_dicts(self) -> list[dict]:
        return [asdict(w) for w in self.words]


CHUNK_S = 300.0  # a long track is transcribed this much at a time (Whisper's memory: ~70 MB per chunk)
CUT_SEARCH_S = 5.0  # a chunk ends at the quietest 0.1 s of its last seconds, not inside a word


def transcribe(wav: str | Path, settings=None, language: str | None = None) -> Captions:
    """Whisper's words of ``wav`` and the cues. The render's own decode (16 kHz mono 16-bit PCM) is read
    in chunks of about CHUNK_S, each cut at a quiet moment, so memory stays flat however long the track
    (faster-whisper computes the features of all it is given at once); the language, when not given,
    is detected on the first chunk and kept for the others. Any other file is handed to Whisper whole."""
    from gpu_worker.speech.whisper import load

    language = check_language(language)
    model = load(settings)
    detected: tuple[str, float] | None = None
    words: list[Word] = []
    for offset, audio in _chunks(Path(wav)):
        segments, info = model.transcribe(
            audio, language=language or (detected[0] if detected else None), word_timestamps=True,
            condition_on_previous_text=False, beam_size=5,
        )  # fmt: skip
        if detected is None:
            detected = (info.language, float(info.language_probability))
        for segment in segments:  # a generator: decoding happens here
            for w in segment.words or []:
                text = w.word.strip()
                if text:
                    start = round(offset + w.start, 3)
                    words.append(Word(start, round(offset + max(w.end, w.start), 3), text, w.probability))
    if detected is None:  # an empty track
        detected = (language, None)
    return Captions(
        language=language or detected[0],
        language_probability=None if language else detected[1],
        words=words,
        cues=build_cues(words),
    )


def _chunks(path: Path):
    """(offset in seconds, samples float32 or the path) of the track, a chunk at a time."""
    import wave

    try:
        with wave.open(str(path), "rb") as w:
            params = (w.getframerate(), w.getnchannels(), w.getsampwidth())
    except (wave.Error, EOFError):
        params = None
    if params != (16000, 1, 2):
        yield 0.0, str(path)
        return
    rate = 16000
    with wave.open(str(path), "rb") as w:
        total = w.getnframes()
        chunk, search, win = int(CHUNK_S * rate), int(CUT_SEARCH_S * rate), rate // 10
        pos = 0
        while pos < total:
            w.setpos(pos)
            pcm = np.frombuffer(w.readframes(min(chunk, total - pos)), "<i2").astype(np.float32) / 32768
            end = pcm.size
            if pos + end < total and end > search:  # cut at the quietest 0.1 s of the last seconds
                tail = pcm[end - search :]
                step = win // 4
                energy = np.convolve(tail**2, np.ones(win), "valid")[::step]
                end = end - search + int(np.argmin(energy)) * step + win // 2
            yield pos / rate, pcm[:end]
            pos += end


# ---- cues ---------------------------------------------------------------------------------------------
def layout(words: list[str], width: int = MAX_LINE_CHARS, lines: int = MAX_LINES) -> list[str] | None:
    """The words as at most ``lines`` lines of at most ``width`` characters, broken at word boundaries
    and as evenly as possible (two lines of similar length read better than a full one and a stub);
    None when they do not fit."""
    text = " ".join(words)
    if len(text) <= width:
        return [text]
    if lines < 2:
        return None
    best: list[str] | None = None
    for i in range(1, len(words)):
        head = " ".join(words[:i])
        if len(head) > width:
            break
        rest = layout(words[i:], width, lines - 1)
        if rest is not None:
            candidate = [head, *rest]
            if best is None or max(map(len, candidate)) < max(map(len, best)):
                best = candidate
    return best


def _pieces(word: Word) -> list[Word]:
    """A word longer than a line, cut into line-sized pieces (its time shared out by length)."""
    if len(word.text) <= MAX_LINE_CHARS:
        return [word]
    parts = [word.text[i : i + MAX_LINE_CHARS] for i in range(0, len(word.text), MAX_LINE_CHARS)]
    step = (word.end - word.start) / len(parts)
    return [
        Word(word.start + k * step, word.start + (k + 1) * step, p, word.probability)
        for k, p in enumerate(parts)
    ]


def build_cues(words: list[Word]) -> list[Cue]:
    """Cues from timed words: a new cue starts at a pause of PAUSE_S or more, after a sentence's end
    (once the cue lasts SENTENCE_MIN_S), or where the next word would make the cue longer than
    MAX_CUE_S or not fit in MAX_LINES lines of MAX_LINE_CHARS. Cues never overlap; a short one is held
    up to MIN_CUE_S where the next leaves room."""
    groups: list[list[Word]] = []
    current: list[Word] = []
    for word in (p for w in words for p in _pieces(w)):
        if current:
            last = current[-1]
            pause = word.start - last.end >= PAUSE_S
            sentence = last.text.endswith(SENTENCE_END) and last.end - current[0].start >= SENTENCE_MIN_S
            too_long = word.end - current[0].start > MAX_CUE_S
            too_wide = layout([w.text for w in current] + [word.text]) is None
            if pause or sentence or too_long or too_wide:
                groups.append(current)
                current = []
        current.append(word)
    if current:
        groups.append(current)
    cues = []
    for k, group in enumerate(groups):
        start, end = group[0].start, group[-1].end
        following = groups[k + 1][0].start if k + 1 < len(groups) else float("inf")
        end = max(end, min(start + MIN_CUE_S, following))
        end = max(min(end, following), start + 0.001)
        cues.append(Cue(round(start, 3), round(end, 3), layout([w.text for w in group]) or []))
    return cues


# ---- writers ------------------------------------------------------------------------------------------
def _stamp(seconds: float, sep: str) -> str:
    ms = max(0, round(seconds * 1000))
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


ZWSP = "\u200b"  # zero-width space: invisible, and no tag or time line can form across it


def escape(text: str) -> str:
    """WebVTT cue text: ``&``, ``<`` and ``>`` as entities (as WebVTT requires): the speech can never
    open a tag, and never holds ``-->`` (which would read as a cue's time line)."""
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return re.sub(r"[\r\n]+", " ", text)


def escape_srt(text: str) -> str:
    """SubRip cue text: SRT has no entities (players show ``&amp;`` as typed, so ``&`` stays as it is),
    but its readers take ``<b>``, ``<i>``, ``<font>`` as markup and a line with ``-->`` as a time line: a
    zero-width space after each ``<`` and inside each ``-->`` keeps both as the plain text they look like."""
    text = text.replace("-->", f"--{ZWSP}>").replace("<", f"<{ZWSP}")
    return re.sub(r"[\r\n]+", " ", text)


def _cue_text(cue: Cue, esc=escape) -> str:
    return "\n".join(esc(line) for line in cue.lines if line.strip()) or " "


def to_vtt(cues: list[Cue]) -> str:
    """WebVTT: a header, then each cue as ``HH:MM:SS.mmm --> HH:MM:SS.mmm`` and its lines."""
    out = ["WEBVTT", ""]
    for cue in cues:
        out += [f"{_stamp(cue.start, '.')} --> {_stamp(cue.end, '.')}", _cue_text(cue), ""]
    return "\n".join(out)


def to_srt(cues: list[Cue]) -> str:
    """SubRip: numbered cues, ``HH:MM:SS,mmm --> HH:MM:SS,mmm``, a blank line after each."""
    out = []
    for k, cue in enumerate(cues, 1):
        out += [
            str(k),
            f"{_stamp(cue.start, ',')} --> {_stamp(cue.end, ',')}",
            _cue_text(cue, escape_srt),
            "",
        ]
    return "\n".join(out)


def caption_paths(video: Path) -> tuple[Path, Path]:
    """Where a video's captions go: OUT.vtt and OUT.srt beside OUT.mp4."""
    return video.with_suffix(".vtt"), video.with_suffix(".srt")


def write_files(captions: Captions, vtt: Path, srt: Path) -> None:
    """Both files, each written under a hidden name and renamed into place (never half-written)."""
    for path, text in ((vtt, to_vtt(captions.cues)), (srt, to_srt(captions.cues))):
        tmp = path.with_name(f".{path.name}.partial")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)


# ---- burn-in ------------------------------------------------------------------------------------------
_FILTER_SPECIALS = "\\'[],;"


def filter_value(text: str) -> str:
    """``text`` as one option value inside an ffmpeg filter graph: escaped for the option parser
    (``\\``, ``'``, ``:``), then for the graph parser (``\\``, ``'``, ``[``, ``]``, ``,``, ``;``)."""
    level1 = text.replace("\\", "\\\\").replace("'", "\\'").replace(":", "\\:")
    return "".join("\\" + c if c in _FILTER_SPECIALS else c for c in level1)


def burn_in(
    video: Path, captions_vtt: Path, out: Path, settings, *, crf: int = 18, preset: str = "veryfast"
) -> None:
    """``video`` with the captions drawn in (re-encoded H.264, the audio copied) written to ``out``.

    The captions are copied to a fresh local temporary folder first and the filter reads only that
    file (as ``file:`` + its path, escaped for the filter graph): no name from a user ever reaches the
    filter string. The video is our own render, opened with the same input options as every file."""
    from gpu_worker.media import process
    from gpu_worker.media.binaries import ffmpeg_exe
    from gpu_worker.media.safety import SAFE_INPUT_OPTIONS, ffmpeg_url

    folder = Path(tempfile.mkdtemp(prefix="synctalk-captions-"))
    try:
        local = folder / "captions.vtt"
        shutil.copyfile(captions_vtt, local)
        graph = f"subtitles=filename={filter_value('file:' + str(local))}:charenc=UTF-8"
        inputs = [a for k, v in SAFE_INPUT_OPTIONS.items() for a in (f"-{k}", v)]
        cmd = [
            ffmpeg_exe(), "-v", "error", "-y", "-nostdin", *inputs, "-i", ffmpeg_url(video.absolute()),
            "-map", "0:v:0", "-map", "0:a?", "-vf", graph, "-c:v", "libx264", "-crf", str(crf),
            "-preset", preset, "-pix_fmt", "yuv420p", "-c:a", "copy", "-movflags", "+faststart",
            ffmpeg_url(out.absolute()),
        ]  # fmt: skip
        process.run(cmd, timeout=settings.ffmpeg_timeout_s, shown=video.name, action="burn captions into")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
