"""Resumable steps: each step publishes its outputs atomically and records the key it was made with.

A key chains everything a step depends on (the source file's content hash, the settings it reads, the
code version, and the previous step's key), so a rerun skips a step exactly when its inputs and
settings are unchanged, and redoes it and everything after it otherwise.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

STEPS_DIR = ".steps"


def file_digest(path: Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file's content (streamed)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def chain_key(previous: str, step: str, params: dict[str, Any]) -> str:
    blob = json.dumps({"prev": previous, "step": step, "params": params}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


class StepCache:
    """Records of finished steps inside a staging folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / STEPS_DIR).mkdir(parents=True, exist_ok=True)

    def _record(self, step: str) -> Path:
        return self.root / STEPS_DIR / f"{step}.json"

    def done(self, step: str, key: str, outputs: list[str]) -> bool:
        """True when ``step`` finished with this key and all its outputs are still there."""
        rec = self._record(step)
        if not rec.is_file():
            return False
        try:
            data = json.loads(rec.read_text())
        except (OSError, ValueError):
            return False
        return data.get("key") == key and all((self.root / o).exists() for o in outputs)

    def load(self, step: str) -> dict[str, Any]:
        return json.loads(self._record(step).read_text()).get("info", {})

    def mark(self, step: str, key: str, info: dict[str, Any] | None = None) -> None:
        write_json_atomic(self._record(step), {"key": key, "info": info or {}})

    def invalidate(self, step: str) -> None:
        self._record(step).unlink(missing_ok=True)


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.partial-{uuid.uuid4().hex[:8]}")
    try:
        tmp.write_text(json.dumps(data, indent=1, default=_json_default))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_npy_atomic(path: Path, array) -> None:
    import numpy as np

    tmp = path.with_name(f".{path.stem}.partial-{uuid.uuid4().hex[:8]}.npy")
    try:
        np.save(tmp, array)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_npz_atomic(path: Path, **arrays) -> None:
    import numpy as np

    tmp = path.with_name(f".{path.stem}.partial-{uuid.uuid4().hex[:8]}.npz")
    try:
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class AtomicDir:
    """Write a folder's files into a hidden sibling, then swap it into place in one rename."""

    def __init__(self, final: Path) -> None:
        self.final = final
        self.tmp = final.with_name(f".{final.name}.partial-{uuid.uuid4().hex[:8]}")

    def __enter__(self) -> Path:
        self.tmp.mkdir(parents=True)
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        if self.final.exists():
            old = self.final.with_name(f".{self.final.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(self.final, old)
            os.replace(self.tmp, self.final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(self.tmp, self.final)


def _json_default(o):
    import numpy as np

    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")
