"""Slow: the real pipeline on the sample subject: sample clip -> preprocess -> tiny training -> eval
(validation frames, and the second clip's speech with its video as the truth) -> AVE on the dataset,
whose audio tower preprocessing then uses as its 'ave' encoder."""

from __future__ import annotations

import json

import numpy as np
import pytest

from gpu_worker.model.config import profile_config
from gpu_worker.model.evaluate import evaluate
from gpu_worker.model.trainer import train_model


@pytest.mark.slow
def test_sample_subject_end_to_end(sample_subject, sample_subject_b, settings, tmp_path):
    from gpu_worker.preprocess import run_preprocess

    settings = settings.model_copy(update={"min_train_seconds": 4.0})  # the shared fixture clip is 6 s
    ds = run_preprocess(sample_subject.video, tmp_path / "ds", settings, resolution=64)
    cfg = profile_config("tiny")
    result = train_model(ds, tmp_path / "m", cfg)
    assert result.stages_done == ["head", "lips", "torso"]
    head = [h["l1"] for h in result.history if h["stage"] == "head"]
    assert np.mean(head[-8:]) < np.mean(head[:8])

    metrics_path = evaluate(
        tmp_path / "m",
        settings=settings,
        audio=sample_subject_b.speech,
        truth_video=sample_subject_b.video,
        max_frames=40,
    )
    m = json.loads(metrics_path.read_text())
    assert m["self_driven"]["frames"] > 0 and np.isfinite(m["self_driven"]["psnr"])
    # eye agreement is measured wherever the mouth's is (both need MediaPipe to find the rendered face,
    # which a tiny model's blur may not allow)
    eyes = {"eye_openness_corr", "eyes_closed_frames", "eye_openness_closed"}
    assert (eyes <= set(m["self_driven"])) == (m["self_driven"]["lmd"] is not None)
    assert m["new_audio"]["frames"] == 40
    # the truth lip gap (MediaPipe on the real clip) follows its speech: the measures are sound
    assert m["new_audio"]["truth_envelope_corr"] > 0.3

    from gpu_worker.ave.towers import AVEConfig
    from gpu_worker.ave.train import AVETrainConfig, train_ave

    ave = train_ave(
        [ds], tmp_path / "ave.pt", AVETrainConfig(steps=5, batch_size=8, towers=AVEConfig(width=4))
    )
    from gpu_worker.preprocess.audio import compute_audio_features

    feats, warnings = compute_audio_features(
        sample_subject_b.speech, "ave", settings, ave_checkpoint=ave.path
    )
    assert feats.shape[1:] == (512,) and not warnings
