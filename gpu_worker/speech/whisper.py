"""One Whisper model per process (faster-whisper on CTranslate2), for speech features and captions.

The folder comes from the model files (whisper-base, ``synctalk models fetch``) or from
``SYNCTALK_WHISPER_MODEL_DIR``; nothing is downloaded. On a CUDA host CTranslate2 runs on the GPU
(float16); elsewhere on the CPU with int8 weights. Loading takes about a second on the CPU, so the
model is kept for the life of the process (a worker loads it once, at its first stage that needs it).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from shared.settings import Settings, get_settings

_lock = threading.Lock()
_models: dict[tuple[str, str], object] = {}


def device() -> str:
    """``cuda`` where CTranslate2 sees a CUDA device, else ``cpu``."""
    try:
        import ctranslate2

        return "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
    except Exception:  # noqa: BLE001 -- a CPU-only build or no driver: the CPU it is
        return "cpu"


def load(settings: Settings | None = None):
    """The process's ``faster_whisper.WhisperModel`` (loaded on first use, then shared; thread-safe)."""
    from shared.model_files.manager import whisper_model_dir

    settings = settings or get_settings()
    folder: Path = whisper_model_dir(settings)
    dev = device()
    key = (str(folder), dev)
    with _lock:
        model = _models.get(key)
        if model is None:
            from faster_whisper import WhisperModel

            threads = int(os.environ.get("SYNCTALK_WHISPER_THREADS", "0")) or min(4, os.cpu_count() or 1)
            model = WhisperModel(
                str(folder), device=dev, compute_type="float16" if dev == "cuda" else "int8",
                cpu_threads=threads, local_files_only=True,
            )  # fmt: skip
            _models[key] = model
        return model
