"""run_preprocess end to end on tiny clips: the dataset contract, resumability and every bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from preprocess_helpers import TINY_HUBERT_HIDDEN, save_tiny_hubert, tiny_settings, write_clip, write_tone

from gpu_worker.media.errors import MediaError
from gpu_worker.preprocess import run_preprocess
from gpu_worker.preprocess.errors import ClipTooShortError, NoFaceError, PreprocessError
from gpu_worker.preprocess.images import read_gray
from gpu_worker.preprocess.parsing import HEAD
from gpu_worker.preprocess.stabilizer.camera import AABB_LIMIT, pixel_rays
from shared.errors import DatasetError

R = 128


def rays_through_box(c2w: np.ndarray, intr: tuple, mask: np.ndarray, box: np.ndarray) -> tuple[int, int]:
    """(rays that meet the box, rays) over the pixels of ``mask`` (slab test, OpenGL camera)."""
    ys, xs = np.nonzero(mask)
    o, d = pixel_rays(c2w, intr, xs, ys)
    with np.errstate(divide="ignore", invalid="ignore"):
        t0, t1 = (box[:3] - o) / d, (box[3:] - o) / d
    near = np.nanmax(np.minimum(t0, t1), 1)
    far = np.nanmin(np.maximum(t0, t1), 1)
    return int(((far > near) & (far > 0)).sum()), int(xs.size)


@pytest.fixture(scope="module")
def dataset(tiny_sample, tmp_path_factory) -> tuple[Path, list]:
    tmp = tmp_path_factory.mktemp("ds")
    events: list = []
    out = run_preprocess(
        tiny_sample / "subject.mp4", tmp / "ds", tiny_settings(tmp), resolution=R,
        progress=lambda *e: events.append(e),
    )  # fmt: skip
    return out, events


def test_dataset_follows_the_contract(dataset):
    ds, events = dataset
    m = json.loads((ds / "manifest.json").read_text())
    n = m["frame_count"]
    assert m["format_version"] == 1 and m["fps"] == 25 and m["resolution"] == R and n == 100
    assert len(m["usable"]) == n and m["audio_encoder"] == "mel" and m["audio_feature_shape"] == [80, 16]
    assert set(m["intrinsics"]) == {"fl_x", "fl_y", "cx", "cy", "w", "h"}
    assert set(m["crop"]) >= {"source_width", "source_height", "x0", "y0", "size", "matrix_crop_to_source"}
    train, val = m["split"]["train"], m["split"]["val"]
    assert len(val) == round(sum(m["usable"]) / 11) and val == list(range(val[0], val[0] + len(val)))
    assert max(train) < min(val)
    for sub, ext in (
        ("frames", "jpg"),
        ("gt", "png"),
        ("torso", "png"),
        ("parsing", "png"),
        ("face_mask", "png"),
    ):
        assert len(list((ds / sub).glob(f"*.{ext}"))) == n, sub
    assert (ds / "background.png").is_file() and (ds / "audio.wav").is_file()
    lm = np.load(ds / "landmarks.npy")
    assert lm.shape == (n, 478, 3) and lm.dtype == np.float32 and np.isfinite(lm).all()
    assert lm[..., :2].min() >= 0 and lm[..., :2].max() <= R
    assert np.load(ds / "blendshapes.npy").shape == (n, 52) and np.load(ds / "expression.npy").shape == (n, 7)
    mel = np.load(ds / "mel.npy")
    assert mel.shape[1] == 80 and abs(len(mel) - 80 * n / 25) <= 2
    assert np.load(ds / "audio_features.npy").shape == (n, 80, 16)
    # features from the level-normalized speech, and the manifest says so (models render new audio alike)
    from gpu_worker.media.frames import load_audio
    from gpu_worker.preprocess import audio as audio_mod

    assert m["audio_level"] == audio_mod.LEVEL_NORM
    recorded = np.asarray(load_audio(ds / "audio.wav", rate=16000), np.float32).reshape(-1)
    leveled, _ = audio_mod.normalize_level(recorded)
    # audio.wav is 16-bit: its rounding moves the log-mel slightly, most in the quietest bins (up to 0.063
    # seen in one bin of 25,680 for a near-silent frame); the bulk must agree far closer than that
    err = np.abs(mel - audio_mod.log_mel(leveled))
    assert err.max() < 0.15 and np.percentile(err, 99) < 0.02 and err.mean() < 0.005
    t = json.loads((ds / "transforms_train.json").read_text())
    assert [f["index"] for f in t["frames"]] == train and np.array(
        t["frames"][0]["transform_matrix"]
    ).shape == (4, 4)
    # Cameras look at the head: the -z axis of each camera points toward the world origin.
    c2w = np.array([f["transform_matrix"] for f in t["frames"]])
    to_origin = -c2w[:, :3, 3] / np.linalg.norm(c2w[:, :3, 3], axis=1, keepdims=True)
    assert (np.einsum("ni,ni->n", -c2w[:, :3, 2], to_origin) > 0.95).all()
    box = np.array(m["aabb"])
    assert (box[:3] < 0).all() and (box[3:] > 0).all() and np.abs(box).max() <= AABB_LIMIT
    # The head box holds the whole head: the camera ray of (nearly) every head pixel, hair included,
    # passes through it (the head NeRF renders nothing outside the box).
    all_frames = t["frames"] + json.loads((ds / "transforms_val.json").read_text())["frames"]
    intr = (m["intrinsics"]["fl_x"], m["intrinsics"]["fl_y"], m["intrinsics"]["cx"], m["intrinsics"]["cy"])
    hit = total = 0
    for f in all_frames[::10]:
        head = read_gray(ds / "parsing" / f"{f['index']:06d}.png") == HEAD
        h, k = rays_through_box(np.array(f["transform_matrix"]), intr, head, box)
        hit, total = hit + h, total + k
    assert total > 0 and hit / total > 0.998  # the face points alone gave 0.990
    report = json.loads((ds / "report.json").read_text())
    assert report["face_detection_ratio"] > 0.9
    pose = report["pose"]
    assert pose["rotation_jitter_deg_after"] < pose["rotation_jitter_deg_before"]
    assert pose["landmark_reprojection_px_after"] < pose["landmark_reprojection_px_before"]
    steps = {e[0] for e in events}
    assert {"track", "analyze", "parse", "stabilize", "audio", "done"} <= steps
    assert all(0.0 <= e[1] <= 1.0 for e in events)
    assert not list(ds.parent.glob(".*partial*"))  # nothing left behind


def test_parsing_labels_and_masks_make_sense(dataset):
    import cv2

    ds, _ = dataset
    lm = np.load(ds / "landmarks.npy")
    labels = cv2.imread(str(ds / "parsing" / "000010.png"), cv2.IMREAD_UNCHANGED)
    mask = cv2.imread(str(ds / "face_mask" / "000010.png"), cv2.IMREAD_UNCHANGED)
    torso = cv2.imread(str(ds / "torso" / "000010.png"), cv2.IMREAD_UNCHANGED)
    assert set(np.unique(labels)) <= {0, 1, 2, 3} and (labels == 1).any()
    nose = np.round(lm[10, 1, :2]).astype(int)
    assert labels[nose[1], nose[0]] == 1 and mask[nose[1], nose[0]] > 200
    assert mask[0, 0] == 0 and torso.shape == (R, R, 4)
    assert (torso[..., 3][labels == 1] == 0).mean() > 0.7  # the head is (mostly) cut out of the torso target


def test_rerun_skips_unchanged_steps_and_redoes_changed(tiny_sample, tmp_path):
    settings = tiny_settings(tmp_path)
    out = run_preprocess(tiny_sample / "subject.mp4", tmp_path / "ds", settings, resolution=96)
    first = (out / "manifest.json").stat().st_mtime_ns
    events: list = []
    run_preprocess(
        tiny_sample / "subject.mp4",
        tmp_path / "ds",
        settings,
        resolution=96,
        progress=lambda *e: events.append(e),
    )
    assert (out / "manifest.json").stat().st_mtime_ns == first and [e[0] for e in events] == ["done"]
    events: list = []
    run_preprocess(
        tiny_sample / "subject.mp4", tmp_path / "ds", settings, resolution=96, audio_encoder="ave",
        progress=lambda *e: events.append(e),
    )  # fmt: skip
    report = json.loads((out / "report.json").read_text())
    assert any("mel" in w for w in report["warnings"])  # ave without a checkpoint falls back to mel
    assert json.loads((out / "manifest.json").read_text())["audio_encoder"] == "mel"
    # Only the encoder changed: the published dataset's steps are reused, only audio is redone.
    assert {e[0] for e in events if "skipped" in e[2]} == {
        "track",
        "analyze",
        "face",
        "parse",
        "targets",
        "stabilize",
    }
    assert ("audio", 0.0, "audio: started") in events
    assert report["reused_steps"] == ["track", "analyze", "face", "parse", "targets", "stabilize"]


def test_encoder_change_on_a_published_dataset_redoes_only_audio(tiny_sample, tmp_path):
    from gpu_worker.preprocess.hubert import HUBERT_DIR_NAME

    settings = tiny_settings(tmp_path)
    out = run_preprocess(tiny_sample / "subject.mp4", tmp_path / "ds", settings, resolution=96)
    before = json.loads((out / "manifest.json").read_text())
    frame_inode = (out / "frames" / "000000.jpg").stat().st_ino
    gt_bytes = (out / "gt" / "000010.png").read_bytes()
    save_tiny_hubert(settings.model_dir / HUBERT_DIR_NAME)
    events: list = []
    run_preprocess(
        tiny_sample / "subject.mp4", out, settings, resolution=96, audio_encoder="hubert",
        progress=lambda *e: events.append(e),
    )  # fmt: skip
    started = [e[0] for e in events if e[2].endswith("started")]
    assert started == ["audio"]
    m = json.loads((out / "manifest.json").read_text())
    n = m["frame_count"]
    assert m["audio_encoder"] == "hubert" and m["audio_feature_shape"] == [2, TINY_HUBERT_HIDDEN]
    feats = np.load(out / "audio_features.npy")
    assert feats.shape == (n, 2, TINY_HUBERT_HIDDEN) and np.isfinite(feats).all()
    for field in ("usable", "split", "intrinsics", "aabb", "crop"):
        assert m[field] == before[field], field
    # The frames are the very same files (hard-linked, never rewritten), the targets unchanged.
    assert (out / "frames" / "000000.jpg").stat().st_ino == frame_inode
    assert (out / "gt" / "000010.png").read_bytes() == gt_bytes
    assert not list(tmp_path.glob(".ds.*"))  # no staging or old copy left behind
    # New weights in the same folder: the features are redone, nothing else.
    import os

    weights = settings.model_dir / HUBERT_DIR_NAME / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    events.clear()
    run_preprocess(
        tiny_sample / "subject.mp4", out, settings, resolution=96, audio_encoder="hubert",
        progress=lambda *e: events.append(e),
    )  # fmt: skip
    assert [e[0] for e in events if e[2].endswith("started")] == ["audio"]
    # Back to mel: again only the audio step runs.
    events.clear()
    run_preprocess(
        tiny_sample / "subject.mp4", out, settings, resolution=96, audio_encoder="mel",
        progress=lambda *e: events.append(e),
    )  # fmt: skip
    assert [e[0] for e in events if e[2].endswith("started")] == ["audio"]
    assert np.load(out / "audio_features.npy").shape == (n, 80, 16)


def test_interrupted_run_resumes_from_finished_steps(tiny_sample, tmp_path, monkeypatch):
    from gpu_worker.preprocess import steps

    settings = tiny_settings(tmp_path)

    def boom(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(steps.StepRunner, "step_targets", boom)
    with pytest.raises(KeyboardInterrupt):
        run_preprocess(tiny_sample / "subject.mp4", tmp_path / "ds", settings, resolution=96)
    assert not (tmp_path / "ds").exists()
    monkeypatch.undo()
    events: list = []
    run_preprocess(tiny_sample / "subject.mp4", tmp_path / "ds", settings, resolution=96,
                   progress=lambda *e: events.append(e))  # fmt: skip
    skipped = {e[0] for e in events if "skipped" in e[2]}
    assert {"track", "analyze", "face", "parse"} <= skipped and "targets" not in skipped
    assert (tmp_path / "ds" / "manifest.json").is_file()


def _noise_frames(n: int, size: int = 128, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (size // 8, size // 8, 3), dtype=np.uint8)
    return [np.repeat(np.repeat(np.roll(base, i // 5, 1), 8, 0), 8, 1) for i in range(n)]


def test_video_without_a_face_fails_clearly(tmp_path):
    s = tiny_settings(tmp_path)
    clip = write_clip(tmp_path / "noface.mp4", _noise_frames(75), s, audio=write_tone(tmp_path / "a.wav", 3))
    with pytest.raises(NoFaceError, match="no face"):
        run_preprocess(clip, tmp_path / "ds", s, resolution=64)
    assert not (tmp_path / "ds").exists()


def test_too_short_clip_fails_before_any_work(tmp_path):
    s = tiny_settings(tmp_path, min_train_seconds=10.0)
    clip = write_clip(tmp_path / "short.mp4", _noise_frames(25), s, audio=write_tone(tmp_path / "a.wav", 1))
    with pytest.raises(ClipTooShortError, match="10 s"):
        run_preprocess(clip, tmp_path / "ds", s, resolution=64)


def test_video_without_audio_is_refused(tmp_path):
    s = tiny_settings(tmp_path)
    clip = write_clip(tmp_path / "mute.mp4", _noise_frames(75), s)
    with pytest.raises(MediaError):
        run_preprocess(clip, tmp_path / "ds", s, resolution=64)


@pytest.mark.parametrize("content", [b"", b"not a video at all" * 100])
def test_malformed_files_are_refused(tmp_path, content):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(content)
    with pytest.raises(MediaError):
        run_preprocess(bad, tmp_path / "ds", tiny_settings(tmp_path), resolution=64)
    assert not (tmp_path / "ds").exists()


def test_unknown_encoder_and_foreign_out_dir_are_refused(tiny_sample, tmp_path):
    s = tiny_settings(tmp_path)
    with pytest.raises(PreprocessError, match="unknown audio encoder"):
        run_preprocess(tiny_sample / "subject.mp4", tmp_path / "ds", s, audio_encoder="nope")
    # Absent encoder weights are refused before any video work (no staging folder is made).
    with pytest.raises(PreprocessError, match="hubert encoder needs"):
        run_preprocess(tiny_sample / "subject.mp4", tmp_path / "ds", s, audio_encoder="hubert")
    with pytest.raises(PreprocessError, match="AVE checkpoint not found"):
        run_preprocess(
            tiny_sample / "subject.mp4",
            tmp_path / "ds",
            s,
            audio_encoder="ave",
            ave_checkpoint=tmp_path / "x.pt",
        )
    assert not list(tmp_path.glob(".ds*")) and not (tmp_path / "ds").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "precious.txt").write_text("keep me")
    # the one DatasetError the dataset's readers raise too (shared.errors), with its one code
    with pytest.raises(DatasetError, match="not a dataset") as err:
        run_preprocess(tiny_sample / "subject.mp4", tmp_path / "mine", s, resolution=64)
    assert err.value.code == "dataset_invalid"
    assert (tmp_path / "mine" / "precious.txt").read_text() == "keep me"


def test_audio_fitting_warns_or_fails():
    from gpu_worker.preprocess.steps import AudioMismatchError, SilentAudioError, fit_audio_to_video

    speech = (0.2 * np.sin(np.arange(16000 * 5) / 7)).astype(np.float32)  # 5 s
    out, warnings = fit_audio_to_video(speech, 125)  # 5 s of video
    assert len(out) == 80000 and warnings == []
    out, warnings = fit_audio_to_video(speech, 100)  # audio longer: cut, with a warning
    assert len(out) == 64000 and "cut" in warnings[0]
    out, warnings = fit_audio_to_video(speech[:56000], 100 + 25)  # 3.5 s of 5 s: padded
    assert len(out) == 80000 and "padded" in warnings[0] and out[-1] == 0
    with pytest.raises(AudioMismatchError):
        fit_audio_to_video(speech[:16000], 125)  # 1 s of audio for 5 s of video
    with pytest.raises(SilentAudioError):
        fit_audio_to_video(np.zeros(80000, np.float32), 125)


def _sample_frames(tiny_sample: Path, s) -> list[np.ndarray]:
    from gpu_worker.media.frames import FrameReader

    with FrameReader(tiny_sample / "subject.mp4", settings=s) as reader:
        return [f.copy() for f in reader]


def test_silent_subject_video_fails_clearly(tiny_sample, tmp_path):
    from gpu_worker.media.audio import write_wav
    from gpu_worker.preprocess.steps import SilentAudioError

    s = tiny_settings(tmp_path)
    silent = write_wav(tmp_path / "silent.wav", np.zeros(16000 * 4, np.float32), 16000)
    clip = write_clip(tmp_path / "silent.mp4", _sample_frames(tiny_sample, s), s, audio=silent)
    with pytest.raises(SilentAudioError, match="silent"):
        run_preprocess(clip, tmp_path / "ds", s, resolution=64)
    assert not (tmp_path / "ds").exists() and not list(tmp_path.glob(".ds*"))


def test_two_faces_follow_the_larger_with_a_warning(tiny_sample, tmp_path):
    import cv2

    s = tiny_settings(tmp_path)
    frames = []
    for f in _sample_frames(tiny_sample, s):  # [256, 256, 3]
        canvas = np.full((256, 416, 3), 90, np.uint8)
        canvas[:, 160:] = f  # the main person
        canvas[64:192, 16:144] = cv2.resize(f, (128, 128))  # a smaller second face on the left
        frames.append(canvas)
    clip = write_clip(tmp_path / "two.mp4", frames, s, audio=tiny_sample / "speech.wav")
    out = run_preprocess(clip, tmp_path / "ds", s, resolution=64)
    report = json.loads((out / "report.json").read_text())
    crop = json.loads((out / "manifest.json").read_text())["crop"]
    assert report["faces_seen"] == 2 and any("2 faces" in w for w in report["warnings"])
    assert crop["x0"] + crop["size"] / 2 > 160  # centred on the larger face


def test_a_changed_step_that_needs_intermediates_redoes_a_published_dataset(
    tiny_sample, tmp_path, monkeypatch
):
    from gpu_worker.preprocess.steps import StepRunner

    settings = tiny_settings(tmp_path)
    out = run_preprocess(tiny_sample / "subject.mp4", tmp_path / "ds", settings, resolution=96)
    assert not (out / ".work").exists()  # published: the intermediates are gone
    plan = StepRunner.plan

    def new_head_box(encoder, weights_id):  # as when the head box's method changes
        return [
            (n, {**p, "changed": 1} if n == "stabilize" else p, o) for n, p, o in plan(encoder, weights_id)
        ]

    monkeypatch.setattr(StepRunner, "plan", staticmethod(new_head_box))
    events: list = []
    run_preprocess(
        tiny_sample / "subject.mp4", tmp_path / "ds", settings, resolution=96,
        progress=lambda *e: events.append(e),
    )  # fmt: skip
    # stabilize reads the face and track intermediates, which a published dataset lacks: all is redone
    assert ("stabilize", 0.0, "stabilize: started") in events and ("face", 0.0, "face: started") in events
    events.clear()
    run_preprocess(
        tiny_sample / "subject.mp4", tmp_path / "ds", settings, resolution=96,
        progress=lambda *e: events.append(e),
    )  # fmt: skip
    assert [e[0] for e in events] == ["done"]  # and the new dataset is up to date for that plan
