"""Checkpoints: written atomically (temp file + os.replace), read back with clear errors.

A checkpoint carries the model architecture and the dataset it was trained for; loading into a
different architecture or dataset is refused with a message saying what differs.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from shared.errors import SyncTalkError

FORMAT = "synctalk-model"
VERSION = 1


class CheckpointError(SyncTalkError):
    """A checkpoint is unreadable, truncated, or made for another model or dataset."""

    code = "checkpoint_invalid"


def save_atomic(payload: dict[str, Any], path: Path) -> None:
    """torch.save to a temp file beside ``path``, fsync, then rename over it (never half-written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save({"format": FORMAT, "version": VERSION, **payload}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # truncated zip, pickle garbage, ...: all mean "corrupt"
        raise CheckpointError(
            f"checkpoint {path} is corrupt or truncated ({type(exc).__name__}: {exc})"
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a SyncTalk model checkpoint")
    if payload.get("version") != VERSION:
        raise CheckpointError(
            f"checkpoint {path} has version {payload.get('version')}; this code reads {VERSION}"
        )
    return payload


def _diff(expected: dict, found: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(expected) | set(found)):
        a, b = expected.get(key), found.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _diff(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: checkpoint {b!r}, expected {a!r}")
    return out


# Architecture fields added after checkpoints were first written: (section, field) -> the value every
# checkpoint written before had. A checkpoint without the field is compared as if it held that value.
ADDED_ARCH_FIELDS: dict[tuple[str, str], Any] = {
    ("field", "grid_layout"): "ngp",
    ("torso", "grid_layout"): "ngp",
}


def _with_added_fields(found: dict) -> dict:
    found = {k: dict(v) if isinstance(v, dict) else v for k, v in found.items()}
    for (section, name), value in ADDED_ARCH_FIELDS.items():
        if isinstance(found.get(section), dict):
            found[section].setdefault(name, value)
    return found


def check_compatible(payload: dict[str, Any], architecture: dict, spec: dict, path: Path) -> None:
    """Refuse a checkpoint whose architecture or dataset spec differs from the run's."""
    found = _with_added_fields(payload.get("architecture", {}))
    diffs = _diff(_jsonable(architecture), _jsonable(found))
    diffs += _diff(_jsonable(spec), _jsonable(payload.get("spec", {})), "dataset.")
    if diffs:
        shown = "; ".join(diffs[:4]) + (f"; and {len(diffs) - 4} more" if len(diffs) > 4 else "")
        raise CheckpointError(f"checkpoint {path} was made for another model or dataset: {shown}")


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, float):
        return round(x, 6)
    return x
