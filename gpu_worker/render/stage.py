"""The render stage: a trained subject + a speech track -> a finished MP4 (H.264 + AAC) and its QC.

``render(model_dir, audio, out, options, settings, progress)`` is the stage function a Celery task and
the CLI call; ``Renderer`` keeps a subject loaded so many tracks render from one load. Per track:

  speech file -> checked, decoded to 16 kHz on disk, features through the model's encoder (an .npy file read by rows)
  -> for each batch of output frames: the driving walk gives pose / expression / images, the audio
     code is interpolated at the frame's time, the head is marched for the whole batch at once
  -> the mode's compositing (crop, portrait blend, paste-back into the source frame)
  -> a streaming H.264 encoder; the audio muxed at the end, cut to the frames' duration
  -> the speech transcribed (Whisper, word timings): captions OUT.vtt and OUT.srt, burnt in on request
  -> quality checks on the output frames, OUT.qc.json beside the video.

Nothing is published half-made: the video appears at ``out`` only when complete, the QC file with it,
and the work files live in a temporary folder beside ``out`` that is removed whatever happens.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from gpu_worker.model.cameras import interpolate_poses
from gpu_worker.model.checkpoint import CheckpointError
from gpu_worker.model.render_api import audio_codes, render_batch
from gpu_worker.render.compose import PasteBack, blend_portrait, resize, to_uint8
from gpu_worker.render.driving import MODEL_FPS, Timeline, build_timeline, interpolate_rows
from gpu_worker.render.options import RenderError, RenderOptions, RenderResult
from gpu_worker.render.qc import SYNC_MAX_FRAMES, QualityChecks
from gpu_worker.render.subject import Subject
from shared.settings import Settings, get_settings

ProgressFn = Callable[[str, float, str], None]
OUTPUT_SUFFIXES = (".mp4", ".mov")
ENVELOPE_FRAMES = 4096  # output frames of speech envelope computed at a time (the QC's read of the track)


def qc_path_for(out: Path) -> Path:
    """Where a render's quality checks go: OUT.qc.json beside OUT.mp4."""
    return out.with_suffix(".qc.json")


class Renderer:
    """A subject loaded once; ``render`` turns each speech track into a video."""

    def __init__(
        self,
        model_dir: str | Path,
        settings: Settings | None = None,
        *,
        source: str | Path | None = None,
        dataset: str | Path | None = None,
        device: str | None = None,
    ) -> None:
        self.settings = settings or get_settings()
        self.subject = Subject(model_dir, self.settings, source=source, dataset=dataset, device=device)

    def close(self) -> None:
        self.subject.close()

    def __enter__(self) -> Renderer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def render(
        self,
        audio: str | Path,
        out: str | Path,
        options: RenderOptions | None = None,
        progress: ProgressFn | None = None,
    ) -> RenderResult:
        options = options or RenderOptions()
        options.check()
        out = Path(out).absolute()
        if out.suffix.lower() not in OUTPUT_SUFFIXES:
            raise RenderError(f"the output must be an .mp4 (or .mov) file, got {out.name}")
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f".{out.stem}.render-", dir=out.parent) as work:
            return _TrackRender(self.subject, options, progress).run(Path(audio), out, Path(work))


def render(
    model_dir: str | Path,
    audio: str | Path,
    out: str | Path,
    options: RenderOptions | None = None,
    settings: Settings | None = None,
    progress: ProgressFn | None = None,
    *,
    source: str | Path | None = None,
) -> RenderResult:
    """Stage function: render one speech track onto a trained subject (see the module docstring)."""
    with Renderer(model_dir, settings, source=source) as renderer:
        return renderer.render(audio, out, options, progress)


class _TrackRender:
    """One track through the stage; holds the per-track state (timeline, writer, QC, timings)."""

    def __init__(self, subject: Subject, options: RenderOptions, progress: ProgressFn | None) -> None:
        self.s = subject
        self.opt = options
        self.progress = progress or (lambda step, fraction, message: None)
        self.timings = dict.fromkeys(("audio", "head", "source", "compose", "encode", "qc", "captions"), 0.0)

    # ---- set-up ------------------------------------------------------------------------------------
    def run(self, audio: Path, out: Path, work: Path) -> RenderResult:
        from gpu_worker.media.frames import FrameWriter
        from gpu_worker.render.speech import open_speech

        started = time.perf_counter()
        track = open_speech(audio, work, self.s.settings)  # refuses a bad file before anything is made
        source = self.s.source_video() if self.opt.mode == "fullframe" else None
        fps, timeline, size = self._layout(source)
        feats, warnings = self._features(track, work)
        n_out = track.n_frames(fps)
        self.fps = fps
        qc = None
        if self.opt.qc:
            towers = self.s.towers()
            qc = QualityChecks(
                float(fps), self.s.settings, towers=towers, face_size=min(self.s.dataset_res, 256)
            )
        report: dict = {}
        burn = self.opt.captions == "burn"
        encoded = work / "plain.mp4" if burn else out  # burnt captions: the plain video stays in work
        with FrameWriter(
            encoded, fps=fps, size=size, audio=track.source, crf=self.opt.crf, preset=self.opt.preset,
            settings=self.s.settings,
        ) as writer, qc or contextlib.nullcontext():  # fmt: skip
            self._frames(timeline, feats, n_out, source, writer, qc)
            captions = None
            if self.opt.captions != "off":
                captions = self._captions(track)
            elif qc is not None:  # for the QC's word checks only: without Whisper they are skipped
                try:
                    captions = self._captions(track)
                except Exception as exc:  # noqa: BLE001 -- no captions asked for: the render goes on
                    qc.notes.append(f"speech not transcribed ({exc}): the word checks were skipped")
            if qc is not None:
                report = self._report(qc, track, feats, n_out, work, warnings, captions)
                (work / "qc.json").write_text(json.dumps(report, indent=2))
            t = time.perf_counter()
        self.timings["encode"] += time.perf_counter() - t  # the encoder's flush and the audio mux
        vtt = srt = None
        if captions is not None and self.opt.captions != "off":
            from gpu_worker.speech.captions import burn_in, caption_paths, write_files

            write_files(captions, work / "captions.vtt", work / "captions.srt")
            if burn:
                t = time.perf_counter()
                burn_in(encoded, work / "captions.vtt", work / "burnt.mp4", self.s.settings,
                        crf=self.opt.crf, preset=self.opt.preset)  # fmt: skip
                os.replace(work / "burnt.mp4", out)
                self.timings["captions"] += time.perf_counter() - t
            vtt, srt = caption_paths(out)
            os.replace(work / "captions.vtt", vtt)  # published right after the video
            os.replace(work / "captions.srt", srt)
        qc_path = None
        if qc is not None:  # published right after the video (which FrameWriter renamed into place)
            qc_path = qc_path_for(out)
            os.replace(work / "qc.json", qc_path)
        return RenderResult(
            video=out, qc_path=qc_path, qc=report, mode=self.opt.mode, frames=n_out, fps=str(fps),
            width=size[0], height=size[1], duration_s=float(n_out / fps),
            seconds=time.perf_counter() - started, timings={k: round(v, 3) for k, v in self.timings.items()},
            captions_vtt=vtt, captions_srt=srt, language=captions.language if captions else None,
        )  # fmt: skip

    def _captions(self, track):
        """The track's words and cues (Whisper, the worker's one model); none for a silent track."""
        from gpu_worker.render.qc import THRESHOLDS
        from gpu_worker.speech.captions import Captions, transcribe

        t = time.perf_counter()
        if track.speech_level_db < THRESHOLDS["silent_speech_db"]:  # Whisper invents words in silence
            captions = Captions(language=self.opt.language, language_probability=None)
        else:
            captions = transcribe(track.wav_path, self.s.settings, self.opt.language)
        self.timings["captions"] += time.perf_counter() - t
        return captions

    def _layout(self, source) -> tuple[Fraction, Timeline, tuple[int, int]]:
        """The output's frame rate, the driving walk and the output's (width, height) for the mode."""
        s = self.s
        if source is not None:  # fullframe: the source's own size (made even) and rate
            timeline = build_timeline(
                s.usable, fps=source.fps, slot_count=source.frame_count, start_frame=self.opt.start_frame
            )
            self.paste = PasteBack(s.crop, s.model_res, (source.width // 2 * 2, source.height // 2 * 2))
            return source.fps, timeline, self.paste.out_size
        fps = Fraction(MODEL_FPS)
        side = s.model_res if self.opt.mode == "crop" else s.dataset_res
        return fps, build_timeline(s.usable, fps=fps, start_frame=self.opt.start_frame), (side, side)

    def _features(self, track, work: Path) -> tuple[np.ndarray, list[str]]:
        """The track's features through the model's encoder and level normalization (rows of an .npy file [N, ...])."""
        from gpu_worker.render.speech import speech_features

        t = time.perf_counter()
        spec = self.s.loaded.spec
        feats, warnings = speech_features(
            track, spec.audio_encoder, spec.audio_level, self.s.settings, work / "features.npy",
            ave_checkpoint=self.s.ave_checkpoint,
        )  # fmt: skip
        if tuple(feats.shape[1:]) != spec.feature_shape:
            raise CheckpointError(
                f"audio features of shape {tuple(feats.shape[1:])} do not fit this model "
                f"({spec.feature_shape}, encoder {spec.audio_encoder})"
            )
        self.timings["audio"] += time.perf_counter() - t
        return feats, warnings

    # ---- the frame loop ------------------------------------------------------------------------------
    def _frames(
        self, timeline: Timeline, feats, n_out: int, source, writer, qc: QualityChecks | None
    ) -> None:
        s, loaded = self.s, self.s.loaded
        info = s.info
        plate = torch.from_numpy(s.plate)
        started = time.perf_counter()
        for j0 in range(0, n_out, self.opt.batch_size):
            count = min(self.opt.batch_size, n_out - j0)
            slots = timeline.walk(j0, count)  # [B]
            u = timeline.model_time(slots)  # [B] model time of each driving slot
            near = np.clip(np.rint(u).astype(np.int64), 0, info.frame_count - 1)  # [B] nearest dataset frame
            poses = torch.from_numpy(interpolate_poses(info.poses, u))  # [B, 4, 4]
            exp = torch.from_numpy(interpolate_rows(info.expression, u))  # [B, 7]
            a = np.clip(timeline.audio_time(j0, count), 0, len(feats) - 1)  # [B] feature time
            enc_a = self._audio_codes(feats, a)  # [B, A]
            latents = [int(k) if s.train[k] else None for k in near]  # other frames' latents were never fit
            t = time.perf_counter()
            torso = None
            if not loaded.has_torso:  # the dataset's torso layer of the driving frame (docs/RENDER.md)
                torso = torch.from_numpy(np.stack([s.images.get("torso", int(k), s.model_res) for k in near]))
            images, _ = render_batch(loaded, poses, enc_a, exp, plate, torso, latents)
            images = images.cpu().numpy()  # [B, R, R, 3]
            self.timings["head"] += time.perf_counter() - t
            for b in range(count):
                src = None
                if source is not None:  # decoded, or from the decoder's window when the walk goes back
                    t = time.perf_counter()
                    src = source.frame(int(slots[b]))  # [H, W, 3] uint8
                    self.timings["source"] += time.perf_counter() - t
                frame = self._compose(images[b], int(near[b]), src)
                t = time.perf_counter()
                writer.write(frame)
                self.timings["encode"] += time.perf_counter() - t
                if qc is not None:
                    self._check(qc, frame, images[b], int(near[b]), a[b])
            done = j0 + count
            rate = done / max(time.perf_counter() - started, 1e-9)
            self.progress(
                "render",
                done / n_out,
                f"frame {done}/{n_out} at {rate:.1f} frames/s, eta {(n_out - done) / rate:.0f} s",
            )

    def _audio_codes(self, feats, a: np.ndarray) -> torch.Tensor:
        """Audio codes at fractional feature times a [B]: the model's codes of the two neighbouring
        25 fps frames, interpolated (the output's frames need not fall on the model's)."""
        t = time.perf_counter()
        lo = np.floor(a).astype(np.int64)
        hi = np.minimum(lo + 1, len(feats) - 1)
        frames, inverse = np.unique(np.concatenate([lo, hi]), return_inverse=True)
        codes = audio_codes(self.s.loaded, feats, frames)  # [U, A]
        w = torch.from_numpy((a - lo).astype(np.float32))[:, None].to(codes.device)
        c_lo, c_hi = codes[torch.from_numpy(inverse[: len(a)])], codes[torch.from_numpy(inverse[len(a) :])]
        self.timings["audio"] += time.perf_counter() - t
        return (1 - w) * c_lo + w * c_hi

    def _compose(self, image: np.ndarray, near: int, src: np.ndarray | None) -> np.ndarray:
        """One output frame (uint8) from a render [R, R, 3] float and, in fullframe, its source frame."""
        t = time.perf_counter()
        s, mode = self.s, self.opt.mode
        if mode == "crop":
            frame = to_uint8(image)
        elif mode == "portrait":
            mask = s.images.get("face_mask", near, s.dataset_res)
            frame = blend_portrait(image, s.images.get("frames", near, s.dataset_res), mask)
        else:
            mask = s.images.get("face_mask", near, s.dataset_res)
            frame = self.paste.paste(image, mask, src)
        self.timings["compose"] += time.perf_counter() - t
        return frame

    def _check(self, qc: QualityChecks, frame: np.ndarray, image: np.ndarray, near: int, a: float) -> None:
        """QC of one output frame: its face region (the crop square of a fullframe frame) to the
        landmarker, and, for the AVE sync, the render's mouth at the model time ``a``."""
        t = time.perf_counter()
        size = qc.face_size
        qc.add_face(
            self.paste.face_crop(frame, size) if self.opt.mode == "fullframe" else resize(frame, size)
        )
        if qc.wants_mouths:
            from gpu_worker.ave.data import crop_mouth, mouth_boxes

            box = mouth_boxes(self.s.info.landmarks[near : near + 1])[0]
            qc.add_mouth(int(round(a)), crop_mouth(image, box))
        self.timings["qc"] += time.perf_counter() - t

    # ---- QC ---------------------------------------------------------------------------------------
    def _report(
        self, qc: QualityChecks, track, feats, n_out: int, work: Path, warnings: list[str], captions=None
    ) -> dict:
        t = time.perf_counter()
        s, spec = self.s, self.s.loaded.spec
        mel = None
        if qc.wants_mouths:  # the AVE scores mel windows: the features themselves when they are mel
            if spec.audio_encoder == "mel" and tuple(feats.shape[1:]) == (80, 16):
                mel = feats
            else:
                from gpu_worker.render.speech import speech_features

                mel, _ = speech_features(
                    track, "mel", spec.audio_level, s.settings, work / "mel.npy",
                    n_frames=min(len(feats), SYNC_MAX_FRAMES),
                )  # fmt: skip
        # a float per output frame, read from the track in bounded chunks (never the whole track at once)
        step = ENVELOPE_FRAMES
        envelope = np.concatenate(
            [track.envelope(self.fps, a, min(a + step, n_out)) for a in range(0, n_out, step)]
        )  # [n_out]
        words = None if captions is None else [(w.start, w.end, w.text) for w in captions.words]
        report = qc.report(track, envelope, mel, words=words)
        if captions is not None:
            report["captions"] = captions.summary()
        report.update(
            mode=self.opt.mode,
            torso="model" if s.loaded.has_torso else "dataset",
            audio_file=track.source.name,
            warnings=list(warnings),
        )
        if not s.loaded.has_torso:
            report["notes"].append(
                "the model has no torso stage: the torso layer comes from the subject's frames"
            )
        self.timings["qc"] += time.perf_counter() - t
        return report
