"""The hubert encoder end to end on a tiny randomly initialised HuBERT checkpoint saved to a temp folder."""

from __future__ import annotations

import numpy as np
import pytest
from preprocess_helpers import TINY_HUBERT_HIDDEN as HIDDEN
from preprocess_helpers import save_tiny_hubert

from gpu_worker.preprocess import audio, hubert
from gpu_worker.preprocess.errors import AudioEncoderError


@pytest.fixture(scope="module")
def tiny_hubert(tmp_path_factory):
    return save_tiny_hubert(tmp_path_factory.mktemp("models") / hubert.HUBERT_DIR_NAME)


def _speechy(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    return (
        0.3 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 4 * t)) + 0.02 * rng.normal(size=t.size)
    ).astype(np.float32)


def test_hubert_features_shape_from_model_dir(settings, tiny_hubert):
    import shutil

    shutil.copytree(tiny_hubert, settings.model_dir / hubert.HUBERT_DIR_NAME)
    samples = _speechy(1.0)
    feats, warnings = audio.compute_audio_features(None, "hubert", settings, samples=samples)
    assert feats.shape == (25, 2, HIDDEN) and feats.dtype == np.float32 and warnings == []
    assert np.isfinite(feats).all() and feats.std() > 0
    # Pinned to a video's frame count: audio shorter than the video is padded, longer is cut.
    feats, _ = audio.compute_audio_features(None, "hubert", settings, samples=samples, n_frames=31)
    assert feats.shape == (31, 2, HIDDEN)


def test_hubert_from_path_argument_matches_direct_model_call(settings, tiny_hubert):
    import torch

    samples = _speechy(1.2, seed=1)  # 30 video frames, 60 feature frames
    feats, _ = audio.compute_audio_features(None, "hubert", settings, samples=samples, hubert_dir=tiny_hubert)
    assert feats.shape == (30, 2, HIDDEN)
    model = hubert.load_hubert(settings, tiny_hubert)
    y = (samples - samples.mean()) / (samples.std() + 1e-7)
    hop, field = hubert.frame_geometry(model.config)
    assert (hop, field) == (320, 400)
    y = np.pad(y, (0, 59 * hop + field - len(y)))
    with torch.no_grad():
        direct = model(torch.from_numpy(y)[None]).last_hidden_state[0].numpy()  # [60, hidden]
    assert direct.shape == (60, HIDDEN)
    # Video frame i holds feature frames 2i and 2i + 1.
    np.testing.assert_allclose(feats.reshape(60, HIDDEN), direct, atol=1e-4)


def test_chunked_run_keeps_the_frame_grid(settings, tiny_hubert):
    """Without context, chunk k must equal the model run on exactly that chunk's samples: no drift of a
    frame per chunk (a naive split into 20 s pieces loses one 20 ms frame at every join)."""
    import torch

    model = hubert.load_hubert(settings, tiny_hubert)
    samples = _speechy(2.0, seed=2)
    n_out = 100
    chunked = hubert.hidden_states(model, samples, n_out, chunk_frames=30, context_frames=0)
    assert chunked.shape == (n_out, HIDDEN)
    y = (samples - samples.mean()) / (samples.std() + 1e-7)
    hop, field = hubert.frame_geometry(model.config)
    y = np.pad(y, (0, max(0, (n_out - 1) * hop + field - len(y))))
    with torch.no_grad():
        third = model(torch.from_numpy(y[60 * hop : 89 * hop + field])[None]).last_hidden_state[0].numpy()
    np.testing.assert_allclose(chunked[60:90], third, atol=1e-4)
    # With context the joins stay close to a single pass over the whole clip.
    with_context = hubert.hidden_states(model, samples, n_out, chunk_frames=30, context_frames=20)
    whole = hubert.hidden_states(model, samples, n_out, chunk_frames=n_out)
    assert np.corrcoef(with_context.ravel(), whole.ravel())[0, 1] > 0.95


def test_hubert_missing_weights_is_a_clear_error(settings, tiny_hubert, tmp_path):
    with pytest.raises(AudioEncoderError, match="config.json"):
        audio.compute_audio_features(
            None, "hubert", settings, samples=_speechy(0.5), hubert_dir=tmp_path / "none"
        )
    only_config = tmp_path / "only_config"
    only_config.mkdir()
    (only_config / "config.json").write_text((tiny_hubert / "config.json").read_text())
    with pytest.raises(AudioEncoderError, match="no weights"):
        audio.compute_audio_features(None, "hubert", settings, samples=_speechy(0.5), hubert_dir=only_config)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((tiny_hubert / "config.json").read_text())
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(AudioEncoderError, match="could not load"):
        audio.compute_audio_features(None, "hubert", settings, samples=_speechy(0.5), hubert_dir=broken)
