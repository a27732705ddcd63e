"""What to dub: a CSV or JSONL manifest (``audio``, ``ref``, optional ``mode``) or a folder of audio files,
read one row at a time (a 100k-row manifest costs no more memory than a 10-row one).

A row whose file is missing, empty or not audio is still yielded, with ``error`` set: the runner reports
it and goes on with the rest.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

AUDIO_EXTENSIONS = frozenset(
    {".wav", ".mp3", ".m4a", ".aac", ".flac", ".ogg", ".oga", ".opus", ".aif", ".aiff", ".mp4", ".mov", ".webm",
     ".mkv", ".m4v"}
)  # fmt: skip
MODES = ("fullframe", "portrait", "crop")


class ManifestError(Exception):
    """The manifest itself cannot be read (not a row of it: those are reported one by one)."""


@dataclass(frozen=True)
class Row:
    line: int  # position in the manifest, from 1 (a folder: in name order)
    audio: Path
    ref: str
    mode: str | None = None
    error: str | None = None


def read_manifest(path: str | Path) -> Iterator[Row]:
    path = Path(path)
    if path.is_dir():
        yield from _folder(path)
    elif not path.exists():
        raise ManifestError(f"{path} does not exist")
    elif path.suffix.lower() in (".jsonl", ".ndjson"):
        yield from _jsonl(path)
    elif path.suffix.lower() == ".csv":
        yield from _csv(path)
    else:
        raise ManifestError(f"{path}: a manifest is a .csv or .jsonl file, or a folder of audio files")


def _row(line: int, base: Path, fields: dict) -> Row:
    audio = str(fields.get("audio") or "").strip()
    ref = str(fields.get("ref") or "").strip() or Path(audio).stem
    mode = str(fields.get("mode") or "").strip() or None
    if not audio:
        return Row(line, base, ref or f"row-{line}", mode, "no audio path in this row")
    file = Path(audio).expanduser()
    file = file if file.is_absolute() else base / file
    error = None
    if mode is not None and mode not in MODES:
        error = f"mode must be one of {', '.join(MODES)}, not {mode!r}"
    return Row(line, file, ref, mode, error or audio_problem(file))


def _csv(path: Path) -> Iterator[Row]:
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or "audio" not in [f.strip() for f in reader.fieldnames]:
            raise ManifestError(
                f"{path}: the CSV needs a header row with an 'audio' column (and 'ref', 'mode')"
            )
        for i, rec in enumerate(reader, start=1):
            yield _row(i, path.parent, {(k or "").strip(): v for k, v in rec.items()})


def _jsonl(path: Path) -> Iterator[Row]:
    with open(path, encoding="utf-8") as fh:
        line_no = 0
        for text in fh:
            if not text.strip():
                continue
            line_no += 1
            try:
                rec = json.loads(text)
            except ValueError as exc:
                yield Row(line_no, path.parent, f"row-{line_no}", None, f"not JSON: {exc}")
                continue
            if not isinstance(rec, dict):
                yield Row(line_no, path.parent, f"row-{line_no}", None, "a row must be a JSON object")
                continue
            yield _row(line_no, path.parent, rec)


def _folder(path: Path) -> Iterator[Row]:
    # names only are sorted (a deterministic order, so a rerun forms the same batches)
    names = sorted(
        e.name for e in os.scandir(path) if e.is_file() and Path(e.name).suffix.lower() in AUDIO_EXTENSIONS
    )
    for i, name in enumerate(names, start=1):
        file = path / name
        yield Row(i, file, file.stem, None, audio_problem(file))


def audio_problem(path: Path) -> str | None:
    """Why ``path`` cannot be a speech track, judged from its first bytes (the API probes it fully)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(16)
    except FileNotFoundError:
        return f"{path.name}: file not found"
    except IsADirectoryError:
        return f"{path.name}: is a folder, not a file"
    except OSError as exc:
        return f"{path.name}: cannot be read ({exc.strerror})"
    if not head:
        return f"{path.name}: the file is empty"
    if not _looks_like_media(head):
        return f"{path.name}: not an audio file (no known audio or video container)"
    return None


def _looks_like_media(h: bytes) -> bool:
    return (
        (h[:4] in (b"RIFF", b"RF64") and h[8:12] in (b"WAVE", b"AVI "))
        or h[:3] == b"ID3"
        or (h[0] == 0xFF and (h[1] & 0xE0) == 0xE0)  # MPEG audio / ADTS frame sync
        or h[:4] in (b"fLaC", b"OggS", b"\x1aE\xdf\xa3", b"#!AM", b"0&\xb2u")
        or h[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide")
        or (h[:4] == b"FORM" and h[8:12] in (b"AIFF", b"AIFC"))
    )
