"""The preprocessing steps, run in order by ``run_preprocess``; each one cached by a chained key."""

from __future__ import annotations

import json
import time
from pathlib import Path

import cv2
import numpy as np

from gpu_worker.preprocess import audio as audio_mod
from gpu_worker.preprocess.dataset_writer import (
    build_manifest,
    package_versions,
    split_frames,
    write_transforms,
)
from gpu_worker.preprocess.errors import PreprocessError
from gpu_worker.preprocess.images import (
    BackgroundWriter,
    frame_name,
    read_gray,
    read_rgb,
    write_jpg,
    write_png,
)
from gpu_worker.preprocess.pipeline import FPS, WORK, Progress
from gpu_worker.preprocess.step_cache import (
    AtomicDir,
    StepCache,
    chain_key,
    save_npy_atomic,
    save_npz_atomic,
    write_json_atomic,
)
from shared.settings import Settings

SILENCE_RMS = 10 ** (-55 / 20)  # below -55 dBFS overall: no speech to learn lips from
AUDIO_MISMATCH_WARN_S = 0.5
AUDIO_MIN_COVERAGE = 0.5  # audio covering less than half of the video fails the job


class AudioMismatchError(PreprocessError):
    code = "audio_mismatch"


class SilentAudioError(PreprocessError):
    code = "silent_audio"


def fit_audio_to_video(samples: np.ndarray, n_frames: int) -> tuple[np.ndarray, list[str]]:
    """Cut or pad 16 kHz audio to exactly the video's length; refuse silence and audio that covers too
    little of the video to learn lips from. Returns (samples [n_frames * 640], warnings)."""
    video_s, audio_s = n_frames / FPS, len(samples) / audio_mod.SAMPLE_RATE
    warnings = []
    if audio_s < AUDIO_MIN_COVERAGE * video_s:
        raise AudioMismatchError(
            f"the audio lasts {audio_s:.1f} s but the video {video_s:.1f} s: too little speech to learn lips from"
        )
    if abs(audio_s - video_s) > AUDIO_MISMATCH_WARN_S:
        what = "padded with silence" if audio_s < video_s else "cut"
        warnings.append(
            f"the audio lasts {audio_s:.1f} s and the video {video_s:.1f} s: audio {what} to match"
        )
    target = int(round(video_s * audio_mod.SAMPLE_RATE))
    samples = np.pad(samples[:target], (0, max(0, target - len(samples))))
    if float(np.sqrt(np.mean(samples.astype(np.float64) ** 2))) < SILENCE_RMS:
        raise SilentAudioError("the audio track is silent: a subject video needs the person speaking")
    return samples, warnings


class StepRunner:
    def __init__(
        self, video: Path, info, staging: Path, settings: Settings, resolution: int, notify: Progress
    ):
        self.video, self.info, self.root, self.settings = video, info, staging, settings
        self.res, self.notify = resolution, notify
        self.work = staging / WORK
        self.work.mkdir(parents=True, exist_ok=True)
        self.cache = StepCache(staging)
        self.seconds: dict[str, float] = {}
        self.warnings: list[str] = []
        self.info_by_step: dict[str, dict] = {}

    # ---- orchestration ----
    # Steps that read no intermediates of earlier steps (only the source and published dataset files):
    # the only ones that can be redone on top of a published dataset, whose .work folder is gone.
    NO_INTERMEDIATES = frozenset({"audio"})

    @staticmethod
    def plan(encoder: str, weights_id: str) -> list[tuple[str, dict, list[str]]]:
        """(step, the parameters its key adds, its outputs) in run order. ``weights_id`` names the
        encoder's weights (path, size, time: see audio.encoder_weights_id), so new weights redo audio."""
        from gpu_worker.preprocess.stabilizer.camera import SILHOUETTE_PAD  # scipy: not at import time

        return [
            ("track", {}, [f"{WORK}/track.json"]),
            ("analyze", {}, ["frames", f"{WORK}/raw_face.npz"]),
            ("face", {}, ["landmarks.npy", "blendshapes.npy", "expression.npy", f"{WORK}/face.npz"]),
            ("parse", {}, ["parsing", "face_mask", "background.png", f"{WORK}/tracks.npz"]),
            ("targets", {}, ["gt", "torso"]),
            # head_box: how the manifest's aabb is found (a new value redoes this step on old datasets)
            (
                "stabilize",
                {"head_box": "silhouette", "pad": SILHOUETTE_PAD},
                ["transforms_train.json", "transforms_val.json", f"{WORK}/poses.npz"],
            ),
            (
                "audio",
                {"encoder": encoder, "weights": weights_id, "level": audio_mod.LEVEL_NORM},
                ["audio.wav", "mel.npy", "audio_features.npy"],
            ),
        ]

    @classmethod
    def step_keys(cls, base: str, encoder: str, weights_id: str) -> dict[str, str]:
        """Each step's chained key: it changes when anything the step or an earlier one reads changes."""
        keys, key = {}, base
        for name, params, _ in cls.plan(encoder, weights_id):
            key = keys[name] = chain_key(key, name, params)
        return keys

    def run_all(
        self,
        base: str,
        encoder: str,
        ave_checkpoint: Path | None,
        *,
        weights_id: str = "",
        published: frozenset = frozenset(),
    ) -> None:
        """Run the steps, skipping those whose record matches. Steps in ``published`` come from a
        published dataset, whose intermediates (``.work``) are gone: their records and dataset files are
        trusted without them."""
        self._ave_checkpoint = ave_checkpoint
        self._encoder = encoder
        keys = self.step_keys(base, encoder, weights_id)
        self.reused: list[str] = []
        for name, _params, outputs in self.plan(encoder, weights_id):
            key = keys[name]
            if name in published:
                outputs = [o for o in outputs if not o.startswith(WORK)]
            if self.cache.done(name, key, outputs):
                self.info_by_step[name] = self.cache.load(name)
                self.warnings += self.info_by_step[name].get("warnings", [])
                self.reused.append(name)
                self.notify(name, 1.0, f"{name}: unchanged, skipped")
                continue
            self.notify(name, 0.0, f"{name}: started")
            start = time.perf_counter()
            info = getattr(self, f"step_{name}")() or {}
            info["seconds"] = round(time.perf_counter() - start, 3)
            self.info_by_step[name] = info
            self.warnings += info.get("warnings", [])
            self.cache.mark(name, key, info)
            self.notify(name, 1.0, f"{name}: done in {info['seconds']:.1f} s")
        self.step_key_map = keys

    def _frames(self, sub: str, ext: str):
        n = self.n_frames
        for i in range(n):
            yield i, self.root / sub / frame_name(i, ext)

    @property
    def n_frames(self) -> int:
        return int(self.info_by_step["track"]["frame_count"])

    def _tick(self, step: str, i: int, every: int = 25) -> None:
        if i % every == 0:
            self.notify(step, i / max(1, self.n_frames), f"{step}: frame {i} of {self.n_frames}")

    # ---- steps ----
    def step_track(self) -> dict:
        from gpu_worker.media.frames import FrameReader
        from gpu_worker.preprocess.crop import find_face_crop

        v = self.info.video
        total = max(1, round(v.duration_s * FPS))
        count = 0

        def frames():
            nonlocal count
            with FrameReader(self.video, fps=FPS, settings=self.settings) as reader:
                for i, frame in enumerate(reader):
                    count = i + 1
                    yield i, frame

        decision = find_face_crop(
            frames(),
            v.display_width,
            v.display_height,
            self.res,
            self.settings,
            fps=FPS,
            total=total,
            progress=lambda f: self.notify("track", f, "finding the face track"),
        )
        if count / FPS < self.settings.min_train_seconds:
            from gpu_worker.preprocess.errors import ClipTooShortError

            raise ClipTooShortError(
                f"the clip has {count / FPS:.1f} s of video; {self.settings.min_train_seconds:g} s needed"
            )
        info = {
            "frame_count": count,
            "crop": decision.crop.as_dict(),
            "sampled_frames": decision.sampled_frames,
            "sampled_with_face": decision.frames_with_face,
            "faces_seen": decision.faces_seen,
            "warnings": decision.warnings,
        }
        write_json_atomic(self.work / "track.json", info)
        return info

    def _crop(self):
        from gpu_worker.preprocess.crop import CropBox

        c = dict(self.info_by_step["track"]["crop"])
        c.pop("matrix_crop_to_source", None)
        return CropBox(**c)

    def step_analyze(self) -> dict:
        from gpu_worker.media.frames import FrameReader
        from gpu_worker.preprocess.face_analysis import FaceAnalyzer
        from gpu_worker.preprocess.landmarker import open_face_landmarker

        crop, n = self._crop(), self.n_frames
        with (
            AtomicDir(self.root / "frames") as tmp,
            open_face_landmarker(self.settings, num_faces=2) as lm,
            BackgroundWriter() as writer,
        ):
            analyzer = FaceAnalyzer(lm, self.res, FPS)
            with FrameReader(self.video, fps=FPS, settings=self.settings) as reader:
                for i, frame in enumerate(reader):
                    if i >= n:
                        break
                    rgb = crop.apply(frame)  # [R, R, 3]
                    analyzer.process(i, rgb)
                    writer.submit(write_jpg, tmp / frame_name(i, "jpg"), rgb)
                    self._tick("analyze", i)
            raw = analyzer.raw()
            if len(raw.detected) != n:
                raise PreprocessError(
                    f"the video gave {len(raw.detected)} frames on the second read, {n} on the first"
                )
        save_npz_atomic(self.work / "raw_face.npz", **vars(raw))
        return {"detected": int(raw.detected.sum())}

    def step_face(self) -> dict:
        from gpu_worker.preprocess.expression import expression_coefficients
        from gpu_worker.preprocess.face_analysis import RawFaceData, finalize_faces

        with np.load(self.work / "raw_face.npz") as z:
            raw = RawFaceData(**{k: z[k] for k in z.files})
        face = finalize_faces(raw, self.settings, FPS)
        save_npy_atomic(self.root / "landmarks.npy", face.landmarks.astype(np.float32))
        save_npy_atomic(self.root / "blendshapes.npy", face.blendshapes.astype(np.float32))
        save_npy_atomic(self.root / "expression.npy", expression_coefficients(face.blendshapes))
        save_npz_atomic(
            self.work / "face.npz", usable=face.usable, detected=face.detected, matrices=face.matrices
        )
        warnings = []
        if not face.usable.all():
            warnings.append(
                f"{int((~face.usable).sum())} frames without a usable face are left out of training"
            )
        return {
            "unusable": face.unusable_reasons,
            "warnings": warnings,
            "usable": int(face.usable.sum()),
            "detection_ratio": round(float(face.detected.mean()), 4),
        }

    def _face(self) -> tuple[np.ndarray, np.ndarray]:
        with np.load(self.work / "face.npz") as z:
            usable = z["usable"]
        return np.load(self.root / "landmarks.npy"), usable

    def _canonical(self):
        from gpu_worker.preprocess.canonical_face import load_canonical_face
        from gpu_worker.preprocess.landmarker import face_landmarker_path
        from gpu_worker.preprocess.stabilizer.rigidity import landmark_rigidity

        face = load_canonical_face(face_landmarker_path(self.settings))
        return face, landmark_rigidity(face)

    def step_parse(self) -> dict:
        from gpu_worker.preprocess.parsing import SelfieLandmarkParser
        from gpu_worker.preprocess.plate import PlateAccumulator
        from gpu_worker.preprocess.stabilizer.tracking import KeypointTracker

        landmarks, usable = self._face()
        _, rigidity = self._canonical()
        plate = PlateAccumulator(self.res)
        tracker = KeypointTracker(np.flatnonzero(rigidity >= 1.0), self.res)
        with (
            AtomicDir(self.root / "parsing") as p_dir,
            AtomicDir(self.root / "face_mask") as m_dir,
            SelfieLandmarkParser(self.settings) as parser,
            BackgroundWriter() as writer,
        ):
            for i, path in self._frames("frames", "jpg"):
                rgb = read_rgb(path)
                parsed = parser.parse(rgb, landmarks[i])
                writer.submit(write_png, p_dir / frame_name(i, "png"), parsed.labels)
                writer.submit(write_png, m_dir / frame_name(i, "png"), parsed.face_mask)
                plate.update(rgb, parsed.labels)
                tracker.step(i, cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), landmarks[i], bool(usable[i]))
                self._tick("parse", i)
        background, inpainted = plate.result()
        write_png(self.root / "background.png", background)
        tracks = tracker.result()
        save_npz_atomic(self.work / "tracks.npz", frame=tracks.frame, track=tracks.track, xy=tracks.xy)
        warnings = []
        if inpainted > 0.25:
            warnings.append(f"{inpainted:.0%} of the background was never uncovered and is inpainted")
        return {"plate_inpainted_share": round(inpainted, 4), "tracks": tracks.n_tracks, "warnings": warnings}

    def step_targets(self) -> dict:
        from gpu_worker.preprocess.parsing import PERSON_THRESHOLD
        from gpu_worker.preprocess.plate import composite_gt, torso_target

        landmarks, _ = self._face()
        plate = read_rgb(self.root / "background.png")
        with (
            AtomicDir(self.root / "gt") as g_dir,
            AtomicDir(self.root / "torso") as t_dir,
            BackgroundWriter() as wr,
        ):
            for i, path in self._frames("frames", "jpg"):
                rgb = read_rgb(path)
                labels = read_gray(self.root / "parsing" / frame_name(i, "png"))
                # The person's soft edge: labels blurred a little (the stored labels are hard).
                person = cv2.GaussianBlur((labels > 0).astype(np.float32), (5, 5), 1.0)
                person = np.where(labels > 0, np.maximum(person, PERSON_THRESHOLD), person)
                wr.submit(write_png, g_dir / frame_name(i, "png"), composite_gt(rgb, person, plate))
                wr.submit(write_png, t_dir / frame_name(i, "png"), torso_target(rgb, labels, landmarks[i]))
                self._tick("targets", i)
        return {}

    def step_stabilize(self) -> dict:
        from gpu_worker.preprocess.stabilizer.bundle_adjust import backproject_tracks, bundle_adjust
        from gpu_worker.preprocess.stabilizer.camera import (
            camera_to_world,
            head_aabb,
            head_centre,
            rotation_jitter_deg,
            silhouette_extent,
            translation_jitter,
        )
        from gpu_worker.preprocess.stabilizer.pose_init import coarse_poses
        from gpu_worker.preprocess.stabilizer.tracking import Tracks

        landmarks, usable = self._face()
        face, rigidity = self._canonical()
        self.notify("stabilize", 0.05, "coarse pose and focal length search")
        coarse = coarse_poses(face.vertices, landmarks, usable, np.flatnonzero(rigidity >= 1.0), self.res)
        with np.load(self.work / "tracks.npz") as z:
            tracks = Tracks(z["frame"], z["track"], z["xy"])
        points = backproject_tracks(tracks, coarse, face.vertices, face.triangles)
        self.notify("stabilize", 0.3, "bundle adjustment")
        ba = bundle_adjust(coarse, face.vertices, rigidity, landmarks, usable, tracks, points)
        origin = head_centre(ba.shape)
        c2w = camera_to_world(ba.poses.rotations, ba.poses.translations, origin)  # [N, 4, 4]
        intr = {
            "fl_x": ba.poses.focal,
            "fl_y": ba.poses.focal,
            "cx": self.res / 2,
            "cy": self.res / 2,
            "w": self.res,
            "h": self.res,
        }
        split = split_frames(usable)
        write_transforms(self.root / "transforms_train.json", intr, c2w, split["train"])
        write_transforms(self.root / "transforms_val.json", intr, c2w, split["val"])
        save_npz_atomic(
            self.work / "poses.npz",
            c2w=c2w,
            coarse_rot=coarse.rotations,
            rot=ba.poses.rotations,
            coarse_trans=coarse.translations,
            trans=ba.poses.translations,
        )
        stats = dict(ba.stats)
        stats.update(
            rotation_jitter_deg_before=rotation_jitter_deg(coarse.rotations, usable),
            rotation_jitter_deg_after=rotation_jitter_deg(ba.poses.rotations, usable),
            translation_jitter_mm_before=10 * translation_jitter(coarse.translations, usable),
            translation_jitter_mm_after=10 * translation_jitter(ba.poses.translations, usable),
        )
        silhouette = silhouette_extent(
            c2w, (intr["fl_x"], intr["fl_y"], intr["cx"], intr["cy"]), self._head_masks(usable)
        )
        aabb = head_aabb(ba.shape, origin, silhouette)
        return {"intrinsics": intr, "split": split, "aabb": aabb, "pose": stats}

    def _head_masks(self, usable: np.ndarray, count: int = 60):
        """(frame, head mask [R, R]) for up to ``count`` usable frames spread over the clip."""
        from gpu_worker.preprocess.parsing import HEAD

        ids = np.flatnonzero(usable)
        for i in ids[np.unique(np.linspace(0, len(ids) - 1, min(count, len(ids))).round().astype(int))]:
            yield int(i), read_gray(self.root / "parsing" / frame_name(int(i), "png")) == HEAD

    def step_audio(self) -> dict:
        from gpu_worker.media.frames import load_audio, write_wav

        n = self.n_frames
        samples = load_audio(self.video, rate=audio_mod.SAMPLE_RATE, settings=self.settings)
        audio_s = len(samples) / audio_mod.SAMPLE_RATE
        samples, warnings = fit_audio_to_video(np.asarray(samples, np.float32), n)
        write_wav(self.root / "audio.wav", samples, audio_mod.SAMPLE_RATE)  # as recorded
        # mel.npy (the AVE's training input) and the features both come from the level-normalized speech
        leveled, gain = audio_mod.normalize_level(samples, audio_mod.LEVEL_NORM)
        mel = audio_mod.log_mel(leveled)  # [T, 80]
        save_npy_atomic(self.root / "mel.npy", mel)
        feats, enc_warnings = audio_mod.compute_audio_features(
            self.root / "audio.wav",
            self._encoder,
            self.settings,
            ave_checkpoint=self._ave_checkpoint,
            n_frames=n,
            samples=leveled,
            level=None,  # already applied
        )
        enc_warnings = audio_mod.level_warnings(gain) + enc_warnings
        save_npy_atomic(self.root / "audio_features.npy", feats.astype(np.float32))
        fell_back = self._encoder == "ave" and tuple(feats.shape[1:]) == audio_mod.FEATURE_SHAPES["mel"]
        return {
            "encoder": "mel" if fell_back else self._encoder,
            "feature_shape": list(feats.shape[1:]),
            "level": audio_mod.LEVEL_NORM,
            "level_gain_db": round(gain, 2),
            "warnings": warnings + enc_warnings,
            "audio_seconds": round(audio_s, 3),
        }

    # ---- outputs ----
    def report(self) -> dict:
        face = self.info_by_step["face"]
        n = self.n_frames
        return {
            "frame_count": n,
            "face_detection_ratio": face["detection_ratio"],
            "usable_frames": face["usable"],
            "unusable_frames": face["unusable"],
            "pose": self.info_by_step["stabilize"]["pose"],
            "plate_inpainted_share": self.info_by_step["parse"]["plate_inpainted_share"],
            "keypoint_tracks": self.info_by_step["parse"]["tracks"],
            "faces_seen": self.info_by_step["track"]["faces_seen"],
            "seconds": {k: v.get("seconds") for k, v in self.info_by_step.items()},
            "ms_per_frame": round(
                1000 * sum(v.get("seconds", 0) for v in self.info_by_step.values()) / max(1, n), 1
            ),
            "reused_steps": self.reused,  # skipped as unchanged: their seconds are from the earlier run
            "warnings": self.warnings,
        }

    def _usable(self) -> np.ndarray:
        if (self.work / "face.npz").is_file():
            with np.load(self.work / "face.npz") as z:
                return z["usable"]
        # A published dataset being updated (encoder change): its manifest holds the same flags.
        return np.array(json.loads((self.root / "manifest.json").read_text())["usable"], bool)

    def manifest(self, cache_key: str) -> dict:
        usable = self._usable()
        st, au, tr = self.info_by_step["stabilize"], self.info_by_step["audio"], self.info_by_step["track"]
        settings = self.settings.model_dump(
            include={"face_gap_max_s", "max_unusable_fraction", "min_train_seconds"}, mode="json"
        )
        return build_manifest(
            fps=FPS,
            resolution=self.res,
            frame_count=self.n_frames,
            usable=usable.tolist(),
            split=st["split"],
            intrinsics=st["intrinsics"],
            aabb=st["aabb"],
            audio_encoder=au["encoder"],
            audio_feature_shape=au["feature_shape"],
            audio_level=au.get("level"),  # None: a dataset whose audio step predates level normalization
            crop=tr["crop"],
            source_probe=self.info.to_dict(),
            settings=settings,
            versions=package_versions(),
            parser="selfie+landmarks",
            cache_key=cache_key,
            step_keys=self.step_key_map,
        )
