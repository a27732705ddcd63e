"""Where the API's processes share their Prometheus counts (prometheus_client's multi-process mode).

prometheus_client decides at import whether values live in memory or in files of a shared folder, so
the folder must be exported before anything imports it: this module imports nothing of it, and
``synctalk api`` calls ``shared_metrics_dir`` before uvicorn starts its processes.
"""

from __future__ import annotations

import atexit
import os
import shutil
import uuid
from pathlib import Path

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def shared_metrics_dir(settings, processes: int) -> Path | None:
    """The folder the API's processes share their counts in, made empty and exported as
    ``PROMETHEUS_MULTIPROC_DIR`` before they start (prometheus_client reads it when imported); None for
    one process. ``prometheus_multiproc_dir`` or an already exported folder wins over a fresh one under
    ``data_dir``. Called once by ``synctalk api`` (the processes it starts inherit the variable)."""
    chosen = settings.prometheus_multiproc_dir or os.environ.get(MULTIPROC_ENV)
    if processes <= 1 and not chosen:
        return None
    folder = Path(chosen) if chosen else settings.data_dir / "prometheus" / uuid.uuid4().hex[:12]
    if folder.exists():  # counts of an earlier run: its processes are gone
        for child in folder.iterdir():
            if child.is_file() and child.suffix == ".db":
                child.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    os.environ[MULTIPROC_ENV] = str(folder)
    if not chosen:  # our own fresh folder: gone with this run (a configured one is left as it is)
        atexit.register(shutil.rmtree, folder, True)
    return folder
