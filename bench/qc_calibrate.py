"""Calibrate the render QC's sync thresholds on real renders (docs/RENDER.md, "Quality checks").

Learns the sample subject (a real face, ``synctalk sample``) with a profile, then renders it:
good renders driven by speech in the sample's voice (its own track and new ones), and bad ones where
the mouth cannot match the speech: the features of another track, all-zero features, the features
shifted in time. Each render's QC inputs (mouth opening per frame, speech envelope, Whisper's words)
are saved, and the QC's measures printed per render, so thresholds can be set between the two groups.

    python bench/qc_calibrate.py --work /tmp/qc-cal [--profile tiny] [--seconds 8] [--tracks 3]
    python bench/qc_calibrate.py --work /tmp/qc-cal --model MODEL_DIR --dataset DIR --source VIDEO
        [--speech WAV ...]   # a subject trained already (e.g. a preview model of the sample)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--profile", default="tiny")
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--tracks", type=int, default=3, help="new speech tracks (seeds 1..N)")
    ap.add_argument("--shift-s", type=float, default=0.6)
    ap.add_argument("--only", default="", help="comma-separated case names to render (default: all)")
    ap.add_argument("--bad-tracks", type=int, default=2, help="tracks rendered each bad way")
    ap.add_argument("--model", type=Path, default=None, help="a trained subject (skips the dub)")
    ap.add_argument("--dataset", type=Path, default=None)
    ap.add_argument("--source", type=Path, default=None)
    ap.add_argument(
        "--speech", type=Path, action="append", default=[], help="more speech tracks (good renders)"
    )
    args = ap.parse_args()

    import gpu_worker.render.qc as qc_mod
    import gpu_worker.render.stage as stage_mod
    from gpu_worker.render.dub import dub
    from gpu_worker.render.options import RenderOptions
    from gpu_worker.render.speech import open_speech
    from gpu_worker.render.stage import Renderer
    from gpu_worker.sample import make_sample
    from shared.settings import Settings

    work: Path = args.work
    work.mkdir(parents=True, exist_ok=True)
    settings = Settings(min_train_seconds=4.0)
    clips = []
    for seed in range(args.tracks + 1):
        folder = work / f"clip{seed}"
        if not (folder / "speech.wav").exists():
            make_sample(folder, seconds=args.seconds, size=256, seed=seed, settings=settings)
        clips.append(folder / "speech.wav")
    clips += list(args.speech)
    if args.model is None:
        t = time.perf_counter()
        first = dub(clips[0].parent / "subject.mp4", clips[0], work / "first.mp4", settings, profile=args.profile,
                    work=work / "dub", options=RenderOptions(qc=False, captions="off"))  # fmt: skip
        print(f"preprocess + train ({args.profile}): {time.perf_counter() - t:.0f} s", flush=True)
        model, dataset, source = first.model, first.dataset, clips[0].parent / "subject.mp4"
    else:
        model, dataset, source = args.model, args.dataset, args.source

    captured: dict = {}
    real_report = qc_mod.QualityChecks.report

    def report(self, track, envelope, mel_windows, words=None):
        captured.update(opening=np.asarray(self.openings, float), envelope=np.asarray(envelope, float),
                        words=words, fps=self.fps)  # fmt: skip
        return real_report(self, track, envelope, mel_windows, words=words)

    qc_mod.QualityChecks.report = report
    real_features = stage_mod._TrackRender._features
    drive: dict = {"how": None}

    def features(self, track, w):
        feats, warnings = real_features(self, track, w)
        feats = np.asarray(feats[: len(feats)], np.float32)
        how = drive["how"]
        if how == "zeros":
            feats = np.zeros_like(feats)
        elif how == "shift":
            feats = np.roll(feats, round(args.shift_s * 25), axis=0)
        elif how == "other":
            other = open_speech(drive["other"], w / "other", self.s.settings)
            (w / "other").mkdir(exist_ok=True)
            o, _ = real_features(self, other, w / "other")
            o = np.asarray(o[: len(o)], np.float32)
            feats = np.resize(o, feats.shape)  # the other track, repeated to this one's length
        return feats, warnings

    stage_mod._TrackRender._features = features
    cases = [("good", f"good{k}", clip, None, None) for k, clip in enumerate(clips)]
    for k, clip in enumerate(clips[: args.bad_tracks]):
        cases.append(("bad", f"other{k}", clip, "other", clips[(k + 1) % len(clips)]))
        cases.append(("bad", f"zeros{k}", clip, "zeros", None))
        cases.append(("bad", f"shift{k}", clip, "shift", None))
    if args.only:
        cases = [c for c in cases if c[1] in args.only.split(",")]
    rows = []
    with Renderer(model, settings, dataset=dataset, source=source) as renderer:
        for group, name, clip, how, other in cases:
            drive.update(how=how, other=other)
            t = time.perf_counter()
            res = renderer.render(clip, work / "renders" / f"{name}.mp4", RenderOptions(captions="off"))
            np.savez(work / "renders" / f"{name}.npz", opening=captured["opening"], envelope=captured["envelope"],
                     fps=captured["fps"], words=json.dumps(captured["words"]))  # fmt: skip
            q = res.qc
            print(f"{name}: {res.frames} frames in {time.perf_counter() - t:.0f} s", flush=True)
            row = {"group": group, "name": name, "flags": q["flags"], **{k: q.get(k) for k in (
                "face_share", "mouth_envelope_corr_best", "mouth_envelope_lag_s")}, **(q.get("sync_checks") or {})}  # fmt: skip
            rows.append(row)
            print(json.dumps(row), flush=True)
    (work / "calibration.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
