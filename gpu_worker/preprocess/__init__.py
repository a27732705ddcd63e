"""Preprocessing: a subject video becomes a training dataset (METHOD.md section 1; layout in docs/DATASET.md).

``run_preprocess`` is the entry point; importing this package loads nothing heavy.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shared.settings import Settings


def run_preprocess(video: Path, out_dir: Path, settings: Settings, **kwargs) -> Path:
    """See gpu_worker.preprocess.pipeline.run_preprocess."""
    from gpu_worker.preprocess.pipeline import run_preprocess as _run

    return _run(video, out_dir, settings, **kwargs)


__all__ = ["run_preprocess"]
