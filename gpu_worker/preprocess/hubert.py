"""HuBERT audio features (METHOD.md 1.8): transformer hidden states at 50 Hz, two per video frame.

Weights come only from a local transformers checkpoint folder (``config.json`` plus ``model.safetensors``
or ``pytorch_model.bin``), by default ``settings.model_dir / "hubert-large-ls960-ft"``; nothing is ever
downloaded (``local_files_only``). The hidden size is the checkpoint's (1024 for HuBERT-large), so the
features are [N, 2, hidden_size].

Long audio runs in chunks (20 s by default) so memory stays bounded; each chunk sees one second of
context on both sides, and chunk edges sit on the model's frame grid, so a chunked run gives exactly one
feature frame per 20 ms, aligned with the video frames however long the clip is.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import numpy as np

from gpu_worker.preprocess.errors import AudioEncoderError
from shared.settings import Settings

HUBERT_DIR_NAME = "hubert-large-ls960-ft"  # folder under settings.model_dir with a transformers checkpoint
SAMPLE_RATE = 16_000
FRAMES_PER_VIDEO_FRAME = 2  # 50 Hz features, 25 fps video
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json")
CHUNK_FRAMES = 1000  # 20 s of audio per forward pass
CONTEXT_FRAMES = 50  # 1 s of context either side of a chunk (dropped from the output)


def hubert_dir(settings: Settings, path: Path | None = None) -> Path:
    """The checkpoint folder: ``path`` if given, else the one under the model directory."""
    return Path(path) if path is not None else Path(settings.model_dir) / HUBERT_DIR_NAME


def check_hubert_dir(folder: Path) -> None:
    """Raise AudioEncoderError with what is missing unless ``folder`` holds a usable checkpoint."""
    if not (folder / "config.json").is_file():
        raise AudioEncoderError(
            f"the hubert encoder needs a transformers checkpoint in {folder} (config.json and weights); "
            "put it there or use --audio-encoder mel"
        )
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise AudioEncoderError(
            f"{folder} has a config.json but no weights ({' or '.join(WEIGHT_FILES[:2])}); "
            "copy the checkpoint's weights there or use --audio-encoder mel"
        )


@lru_cache(maxsize=1)
def _load(folder: str, stamp: float):
    """The model, cached per folder and config modification time (rendering calls this per clip)."""
    try:
        from transformers import HubertModel
    except ImportError as exc:
        raise AudioEncoderError(
            "the hubert encoder needs the 'transformers' package, which is not installed; use --audio-encoder mel"
        ) from exc
    try:
        model = HubertModel.from_pretrained(folder, local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - a corrupt file raises OSError, ValueError, SafetensorError, ...
        raise AudioEncoderError(f"could not load the hubert checkpoint in {folder}: {exc}") from exc
    return model.eval()


def load_hubert(settings: Settings, path: Path | None = None):
    """HubertModel (eval mode) from a local checkpoint folder; AudioEncoderError where it is unusable."""
    folder = hubert_dir(settings, path)
    check_hubert_dir(folder)
    return _load(str(folder.resolve()), (folder / "config.json").stat().st_mtime)


def frame_geometry(config) -> tuple[int, int]:
    """(hop, receptive field) in samples of the convolutional front end: 320 and 400 for HuBERT."""
    hop, field = 1, 1
    for kernel, stride in zip(config.conv_kernel, config.conv_stride, strict=True):
        field += (kernel - 1) * hop
        hop *= stride
    return hop, field


def hidden_states(
    model,
    samples: np.ndarray,
    n_out: int,
    *,
    chunk_frames: int = CHUNK_FRAMES,
    context_frames: int = CONTEXT_FRAMES,
) -> np.ndarray:
    """Last hidden states for exactly ``n_out`` feature frames (the audio is zero-padded or cut to
    match). Frame j covers samples [j * hop, j * hop + field). [n_out, hidden]"""
    hop, field = frame_geometry(model.config)
    y = np.asarray(samples, dtype=np.float32).reshape(-1)
    # Utterance-level normalisation, as HuBERT's feature extractor does (do_normalize).
    y = (y - y.mean()) / (y.std() + 1e-7) if y.size else y
    need = (n_out - 1) * hop + field if n_out else 0
    y = np.pad(y[:need], (0, max(0, need - len(y))))
    return hidden_states_from(
        model, lambda a, b: y[a:b], n_out, chunk_frames=chunk_frames, context_frames=context_frames
    )


def hidden_states_from(
    model,
    read: Callable[[int, int], np.ndarray],
    n_out: int,
    *,
    chunk_frames: int = CHUNK_FRAMES,
    context_frames: int = CONTEXT_FRAMES,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """``hidden_states`` over audio read one chunk at a time (a long track never held whole):
    ``read(start, stop)`` gives the already normalised samples [stop - start], zero past the end.
    Writes into ``out`` [n_out, hidden] (e.g. a memmap) when given, else a new array. [n_out, hidden]"""
    import torch

    hop, field = frame_geometry(model.config)
    if out is None:
        out = np.empty((n_out, model.config.hidden_size), np.float32)
    with torch.no_grad():
        for a in range(0, n_out, chunk_frames):
            b = min(n_out, a + chunk_frames)
            lo, hi = max(0, a - context_frames), min(n_out, b + context_frames)
            chunk = np.ascontiguousarray(read(lo * hop, (hi - 1) * hop + field), dtype=np.float32)
            h = model(torch.from_numpy(chunk)[None]).last_hidden_state[0]  # [hi - lo, hidden]
            if h.shape[0] != hi - lo:
                raise AudioEncoderError(
                    f"the hubert checkpoint gave {h.shape[0]} frames for {hi - lo} expected: "
                    "its front end is not the 20 ms grid this code assumes"
                )
            out[a:b] = h[a - lo : b - lo].float().numpy()
    return out


def check_frame_hop(model):
    """``model`` when its features fall two per 25 fps video frame (a 320-sample hop), else
    AudioEncoderError."""
    hop, _ = frame_geometry(model.config)
    per_frame = SAMPLE_RATE / 25 / hop
    if not math.isclose(per_frame, FRAMES_PER_VIDEO_FRAME):
        raise AudioEncoderError(
            f"the hubert checkpoint's frame hop is {hop} samples: {per_frame:g} features per video frame, not 2"
        )
    return model


def hubert_features(
    samples: np.ndarray, n_frames: int, settings: Settings, path: Path | None = None
) -> np.ndarray:
    """HuBERT features for ``n_frames`` video frames at 25 fps from 16 kHz mono samples. [N, 2, hidden]"""
    model = check_frame_hop(load_hubert(settings, path))
    feats = hidden_states(model, samples, FRAMES_PER_VIDEO_FRAME * n_frames)  # [2N, hidden]
    return feats.reshape(n_frames, FRAMES_PER_VIDEO_FRAME, feats.shape[-1])  # [N, 2, hidden] (N may be 0)
