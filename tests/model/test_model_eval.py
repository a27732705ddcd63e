"""Frame rendering API and evaluation on a tiny trained model."""

from __future__ import annotations

import json

import numpy as np
import pytest

from gpu_worker.model.checkpoint import CheckpointError
from gpu_worker.model.config import profile_config
from gpu_worker.model.dataparser import parse_dataset
from gpu_worker.model.evaluate import evaluate_model
from gpu_worker.model.render_api import load_model, pingpong_indices, render_frames
from gpu_worker.model.trainer import FINAL, train_model


@pytest.fixture(scope="module")
def tiny_model(synthetic_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny_model") / "m"
    train_model(synthetic_dataset, out, profile_config("tiny"))
    return out


def test_render_frames_yields_bounded_batches(tiny_model, synthetic_dataset):
    loaded = load_model(tiny_model)
    assert loaded.has_torso
    info = parse_dataset(synthetic_dataset, loaded.spec.resolution)
    ids = pingpong_indices(info.train_ids, 7)
    plate = np.zeros((info.resolution, info.resolution, 3), np.float32)
    batches = list(
        render_frames(
            loaded, info.poses[ids], info.expression[ids], info.audio_features[ids], plate, batch_size=3
        )
    )
    assert [b.start for b in batches] == [0, 3, 6]
    assert [len(b.images) for b in batches] == [3, 3, 1]
    img = batches[0].images
    assert img.shape[1:] == (info.resolution, info.resolution, 3) and np.isfinite(img).all()
    assert img.min() >= 0 and img.max() <= 1
    # the head is drawn somewhere (alpha near 1 on the face, near 0 in the corners)
    alpha = batches[0].head_alpha[0]
    assert alpha.max() > 0.5 and alpha[0, 0] < 0.2


def test_rendering_follows_the_audio(tiny_model, synthetic_dataset):
    """Same pose, different audio windows: the frames differ (the audio path is wired through)."""
    loaded = load_model(tiny_model)
    info = parse_dataset(synthetic_dataset, loaded.spec.resolution)
    n = 4
    poses = np.repeat(info.poses[:1], n, 0)
    exp = np.repeat(info.expression[:1], n, 0)
    plate = np.zeros((info.resolution, info.resolution, 3), np.float32)
    quiet = np.full((n, 80, 16), -4.0, np.float32)
    loud = np.full((n, 80, 16), 4.0, np.float32)
    a = next(render_frames(loaded, poses, exp, quiet, plate)).images
    b = next(render_frames(loaded, poses, exp, loud, plate)).images
    assert np.abs(a - b).max() > 1e-4


def test_compacting_marcher_matches_the_training_marcher(tiny_model, synthetic_dataset):
    import torch

    from gpu_worker.model.render_api import render_frame

    loaded = load_model(tiny_model)
    info = parse_dataset(synthetic_dataset, loaded.spec.resolution)
    m = loaded.model
    with torch.no_grad():
        feats = torch.from_numpy(info.audio_features[:4])[None]
        enc_a = m.audio_code(feats)[0]
    args = (
        torch.from_numpy(info.poses[2]),
        enc_a,
        torch.from_numpy(info.expression[2]),
        torch.zeros(48, 48, 3),
        None,
    )
    fast, a_fast = render_frame(loaded, *args, compact=True)
    # the training marcher with a budget large enough to reach the far side of the box: the same samples
    loaded.config.renderer.infer_max_samples_per_ray = 4096
    ref, a_ref = render_frame(loaded, *args, compact=False)
    assert a_ref.max() > 0.5
    assert (fast - ref).abs().max() < 0.01 and (a_fast - a_ref).abs().max() < 0.01


def test_frames_marched_together_equal_frames_marched_alone(tiny_model, synthetic_dataset, monkeypatch):
    """A batch's frames share one march (each ray keeps its own frame's audio, expression, latent),
    in a few field calls: the result is the frame-by-frame one."""
    from gpu_worker.model import render_api

    loaded = load_model(tiny_model)
    info = parse_dataset(synthetic_dataset, loaded.spec.resolution)
    ids = info.train_ids[[0, 5, 9]]
    plate = np.zeros((info.resolution, info.resolution, 3), np.float32)
    feats = np.random.default_rng(0).normal(0, 2, info.audio_features[ids].shape).astype(np.float32)
    args = (info.poses[ids], info.expression[ids], feats, plate)
    calls = []
    infer = loaded.model.field.infer
    monkeypatch.setattr(loaded.model.field, "infer", lambda *a: calls.append(1) or infer(*a))
    together = next(render_frames(loaded, *args, latent_indices=[0, 5, 9], batch_size=3))
    n_together = len(calls)
    # frames split across marches (a chunk smaller than a frame) must give the same frames too
    monkeypatch.setattr(render_api, "INFER_BYTES", render_api.BYTES_PER_SAMPLE * 700)
    monkeypatch.setattr(loaded.config.renderer, "chunk_rays", 700)
    alone = np.concatenate(
        [b.images for b in render_frames(loaded, *args, latent_indices=[0, 5, 9], batch_size=1)]
    )
    # the same samples up to where the round/step caps cut the last rays (they cut at different
    # rounds when n_step = K // n_alive differs): the compact-marcher test's tolerance
    diff = np.abs(together.images - alone)
    assert diff.max() < 0.01 and diff.mean() < 1e-3
    assert not np.allclose(together.images[0], together.images[1], atol=1e-3)
    assert n_together <= loaded.config.renderer.max_steps and n_together < len(calls)


def test_pingpong():
    assert pingpong_indices([5, 6, 7], 7).tolist() == [5, 6, 7, 6, 5, 6, 7]
    assert pingpong_indices([3], 3).tolist() == [3, 3, 3]


def test_eval_writes_metrics(tiny_model, synthetic_dataset_b, settings, tmp_path):
    out = tmp_path / "eval"
    m = evaluate_model(tiny_model, settings, reference=synthetic_dataset_b, out_dir=out, max_frames=12)
    saved = json.loads((out / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(m))
    sd = m["self_driven"]
    assert sd["frames"] == 4 and 5 < sd["psnr"] < 60 and -1 <= sd["ssim"] <= 1
    # the portrait blend keeps the frame outside the inner face: never worse than the raw render
    assert sd["psnr_portrait"] >= sd["psnr"]
    # against the real crops too (here the JPEG of the same picture as gt/: about the same figures)
    assert abs(sd["psnr_frames"] - sd["psnr"]) < 1.5 and -1 <= sd["ssim_frames"] <= 1
    assert sd["psnr_portrait_frames"] >= sd["psnr_frames"]
    # the face region alone, against both references: no background to flatter it, no real pixels
    assert 5 < sd["psnr_face"] < 60 and 5 < sd["psnr_face_frames"] < 60
    assert sd["psnr_face_frames"] < sd["psnr_portrait_frames"]
    # the model's own torso: said so, and no note about the dataset's
    assert sd["torso"] == "model" and m["new_audio"]["torso"] == "model"
    assert not any("torso" in n for n in m["notes"])
    na = m["new_audio"]
    assert na["frames"] == 12
    assert set(na) >= {"mouth_envelope_corr", "lip_gap_corr_truth", "sync_confidence", "mouth_measure"}
    assert na["truth_envelope_corr"] is not None and na["truth_envelope_corr"] > 0.5  # sanity of the measures
    assert (out / "val_000.png").is_file() and (out / "audio_000.png").is_file()
    assert any("AVE" in n for n in m["notes"])  # no AVE checkpoint here: said so, not faked


def test_eval_scores_the_real_frames_where_the_plate_is_off(
    tiny_model, synthetic_dataset, settings, tmp_path
):
    """psnr/ssim compare with gt/ (person over the plate the render uses too: the background matches
    for free); the *_frames keys compare with frames/, the real crops, whose background the plate only
    estimates. Here the real background is made 0.3 brighter than the plate."""
    import shutil

    import cv2

    ds = tmp_path / "ds"
    shutil.copytree(synthetic_dataset, ds)
    for path in sorted((ds / "frames").glob("*.jpg")):
        gt = cv2.imread(str(ds / "gt" / f"{path.stem}.png")).astype(np.float32)
        person = cv2.imread(str(ds / "parsing" / f"{path.stem}.png"), cv2.IMREAD_GRAYSCALE)[..., None] > 0
        cv2.imwrite(str(path), np.where(person, gt, np.clip(gt + 77, 0, 255)).astype(np.uint8))
    sd = evaluate_model(tiny_model, settings, dataset=ds, out_dir=tmp_path / "ev", max_frames=4)[
        "self_driven"
    ]
    assert sd["psnr_frames"] < sd["psnr"] - 2 and sd["ssim_frames"] < sd["ssim"]
    # (measured: psnr 16.5, psnr_frames 12.4 dB.) The portrait blend shows the real frame outside the
    # face: the background's error is gone again, as it is against gt/ (measured 17.94 and 17.91 dB)
    assert sd["psnr_portrait_frames"] > sd["psnr_frames"] + 2
    assert abs(sd["psnr_portrait_frames"] - sd["psnr_portrait"]) < 0.5


def test_eval_without_a_torso_stage_says_the_torso_is_the_datasets(
    tiny_model, synthetic_dataset_b, settings, tmp_path
):
    import shutil

    import torch

    model = tmp_path / "m"
    shutil.copytree(tiny_model, model)
    payload = torch.load(model / FINAL, map_location="cpu", weights_only=False)
    payload["stages_done"] = ["head", "lips"]  # as if trained without the torso stage
    torch.save(payload, model / FINAL)
    assert not load_model(model).has_torso
    m = evaluate_model(model, settings, reference=synthetic_dataset_b, out_dir=tmp_path / "ev", max_frames=8)
    assert m["self_driven"]["torso"] == "dataset" and m["new_audio"]["torso"] == "dataset"
    assert sum("no trained torso stage" in n for n in m["notes"]) == 1  # said once, for both parts
    saved = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert saved["self_driven"]["torso"] == "dataset" and saved["notes"] == m["notes"]


def test_self_driven_landmarks_come_from_one_tracker_per_stream(
    tiny_model, synthetic_dataset, settings, tmp_path, monkeypatch
):
    """Evaluation feeds the renders to one tracker and the gt frames to the other, frame by frame
    (test_eval_landmarks.py measures why on a real face; the synthetic sphere has no face to find)."""
    from contextlib import contextmanager

    import cv2

    from gpu_worker.model.eval import self_driven
    from gpu_worker.model.eval.landmarks import LandmarkPairs

    seen: dict[str, list[np.ndarray]] = {"render": [], "truth": []}

    class Tracker:
        def __init__(self, stream: str) -> None:
            self.stream = stream

        def __call__(self, image: np.ndarray) -> np.ndarray:
            seen[self.stream].append(image.copy())
            return np.full((478, 3), 1.0 if self.stream == "render" else 0.0, np.float32)

    @contextmanager
    def pairs(_settings):
        yield LandmarkPairs(Tracker("render"), Tracker("truth"))

    monkeypatch.setattr(self_driven, "landmark_pairs", pairs)
    sd = evaluate_model(tiny_model, settings, out_dir=tmp_path / "ev", max_frames=4)["self_driven"]
    assert len(seen["render"]) == len(seen["truth"]) == sd["lmd_frames"] == 4
    assert sd["lmd_px"] == pytest.approx(np.sqrt(2))  # every landmark 1 px off in x and y
    val = parse_dataset(synthetic_dataset).val_ids
    for k, truth in enumerate(seen["truth"]):
        gt = cv2.imread(str(synthetic_dataset / "gt" / f"{val[k]:06d}.png"))[..., ::-1] / 255.0
        np.testing.assert_allclose(truth, gt, atol=1e-6)
    assert not np.allclose(seen["render"][0], seen["truth"][0], atol=0.02)


def test_eval_of_missing_or_corrupt_model(tmp_path, settings, tiny_model):
    with pytest.raises(CheckpointError, match="does not exist"):
        evaluate_model(tmp_path, settings)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / FINAL).write_bytes((tiny_model / FINAL).read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_model(bad)


def test_model_files_from_before_the_audio_torso_still_render(tmp_path, tiny_model, synthetic_dataset):
    import shutil

    import torch

    payload = torch.load(tiny_model / FINAL, map_location="cpu", weights_only=False)
    payload["model"]["torso.audio_proj.weight"].zero_()
    payload["model"]["torso.audio_proj.bias"].zero_()
    payload["model"]["field.exp_mean"].zero_()
    payload["model"]["field.exp_std"].fill_(1.0)
    zeroed, old = tmp_path / "zeroed", tmp_path / "old"
    for folder in (zeroed, old):
        shutil.copytree(tiny_model, folder)
    torch.save(payload, zeroed / FINAL)
    # a model trained before the torso heard the audio and before the expression was standardized
    for key in ("torso.audio_proj.weight", "torso.audio_proj.bias", "field.exp_mean", "field.exp_std"):
        del payload["model"][key]
    torch.save(payload, old / FINAL)
    info = parse_dataset(synthetic_dataset)
    ids = info.train_ids[:2]
    plate = np.zeros((info.resolution, info.resolution, 3), np.float32)

    def frames(folder):
        m = load_model(folder)
        args = (info.poses[ids], info.expression[ids], info.audio_features[ids], plate)
        return np.concatenate([b.images for b in render_frames(m, *args)])

    np.testing.assert_array_equal(frames(old), frames(zeroed))  # renders as the pose-only torso did
    del payload["model"]["torso.color_net.0.weight"]  # any other missing weight is still refused
    torch.save(payload, old / FINAL)
    with pytest.raises(CheckpointError, match="does not match"):
        load_model(old)


def test_new_audio_gets_the_level_normalization_the_model_was_trained_with(tiny_model, settings):
    from gpu_worker.model.model import ModelSpec
    from gpu_worker.model.render_api import audio_features_for
    from gpu_worker.preprocess.audio import LEVEL_NORM

    t = np.arange(32000) / 16000
    speech = (0.3 * np.sin(2 * np.pi * 220 * t) * (np.sin(2 * np.pi * 3 * t) > 0)).astype(np.float32)
    quiet = speech * np.float32(0.05)  # 26 dB quieter
    loaded = load_model(tiny_model)
    # the synthetic dataset predates the normalization: its model gets the audio as recorded
    assert loaded.spec.audio_level is None and "audio_level" not in loaded.spec.to_dict()
    a, _ = audio_features_for(loaded, speech, settings)
    b, _ = audio_features_for(loaded, quiet, settings)
    assert a.shape == (50, 80, 16) and (a - b).max() > 1.0
    loaded.spec.audio_level = LEVEL_NORM  # a model trained on a normalized dataset
    assert ModelSpec.from_dict(loaded.spec.to_dict()).audio_level == LEVEL_NORM
    a, _ = audio_features_for(loaded, speech, settings)
    b, warnings = audio_features_for(loaded, quiet, settings)
    assert np.abs(a - b).max() < 1e-3 and any("quiet" in w for w in warnings)


def test_eval_of_very_quiet_new_audio_says_so(tiny_model, synthetic_dataset, settings, tmp_path):
    import shutil

    import torch

    from gpu_worker.media.audio import write_wav
    from gpu_worker.preprocess.audio import LEVEL_NORM

    model = tmp_path / "m"
    shutil.copytree(tiny_model, model)
    payload = torch.load(model / FINAL, map_location="cpu", weights_only=False)
    payload["spec"]["audio_level"] = LEVEL_NORM  # as if trained on a level-normalized dataset
    torch.save(payload, model / FINAL)
    t = np.arange(16000) / 16000
    whisper = (0.002 * np.sin(2 * np.pi * 200 * t) * (np.sin(2 * np.pi * 3 * t) > 0)).astype(np.float32)
    write_wav(tmp_path / "whisper.wav", whisper, 16000)
    m = evaluate_model(
        model, settings, dataset=synthetic_dataset, audio=tmp_path / "whisper.wav", out_dir=tmp_path / "ev",
        max_frames=3,
    )  # fmt: skip
    assert m["new_audio"]["frames"] == 3
    assert any("very quiet" in w for w in m["new_audio"]["warnings"])


def test_new_audio_sync_is_scored_with_ave_towers(
    tiny_model, synthetic_dataset, synthetic_dataset_b, settings, tmp_path, monkeypatch
):
    from gpu_worker.ave.sync import offset_curve
    from gpu_worker.ave.towers import AVEConfig
    from gpu_worker.ave.train import AVETrainConfig, train_ave

    ave = train_ave(
        [synthetic_dataset],
        tmp_path / "ave.pt",
        AVETrainConfig(steps=2, batch_size=4, towers=AVEConfig(width=4)),
    )
    import gpu_worker.ave.sync as sync_mod

    seen: list[np.ndarray] = []

    def spy(audio_tower, lip_tower, windows, *args, **kwargs):
        seen.append(np.asarray(windows))
        return offset_curve(audio_tower, lip_tower, windows, *args, **kwargs)

    monkeypatch.setattr(sync_mod, "offset_curve", spy)
    m = evaluate_model(
        tiny_model, settings, reference=synthetic_dataset_b, ave_checkpoint=ave.path,
        out_dir=tmp_path / "ev", max_frames=12,
    )  # fmt: skip
    na = m["new_audio"]
    assert na["sync"] is not None and np.isfinite(na["sync_confidence"])
    # the mel model's own features are the windows the towers score: no second log-mel
    ref = parse_dataset(synthetic_dataset_b)
    np.testing.assert_array_equal(seen[-1], ref.audio_features[:12])
