"""Lip sync of one trained model under other voices and recording levels (what dubbing sends).

    python bench/voices.py demo-output/model [--out demo-output/voices] [--seed 1] [--seconds 10] [--size 256]
        [--voices auto,espeak-ng:de,...] [--clips DIR] [--no-levels]

Makes clips of the sample subject saying the same text (``--seed``) in several voices (the default
voice and espeak-ng's en-us, en-us+f3 and en-gb+m4, where espeak-ng is installed), plus copies of the
first clip's speech 18 dB quieter (also resampled to 44.1 kHz stereo) and 3 dB louder. Each track drives
the model; the lip-gap correlation of the renders with that clip's own video (MediaPipe on both) is the
figure. Prints a table and writes voices.json under --out. No asserts: figures for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import wave
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

VOICES = ("auto", "espeak-ng:en-us", "espeak-ng:en-us+f3", "espeak-ng:en-gb+m4")
# other languages' voices (issue 23), reading the same English text with their own phonetics
MORE_VOICES = ("espeak-ng:de", "espeak-ng:es+f3", "espeak-ng:fr")
LEVELS = (("-18 dB", -18.0, 0, 1), ("-18 dB, 44.1 kHz stereo", -18.0, 44100, 2), ("+3 dB", 3.0, 0, 1))


def _level_copies(speech: Path, out: Path) -> list[tuple[str, Path]]:
    """The clip's speech at other levels (and one at another rate and channel count)."""
    from scipy.signal import resample_poly

    from gpu_worker.media.audio import write_wav

    with wave.open(str(speech), "rb") as w:
        rate = w.getframerate()
        x = np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float32) / 32768
    copies = []
    for name, gain_db, new_rate, channels in LEVELS:
        y = x * np.float32(10 ** (gain_db / 20))
        if new_rate:
            y = resample_poly(y, new_rate, rate).astype(np.float32)
        path = out / f"speech {name}.wav".replace(" ", "_").replace(",", "")
        write_wav(path, np.repeat(y[:, None], channels, axis=1), new_rate or rate)  # [N, C]
        copies.append((name, path))
    return copies


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path)
    ap.add_argument("--out", type=Path, default=None, help="Default: MODEL/../voices.")
    ap.add_argument("--seed", type=int, default=1, help="Chooses the text (the same for every voice).")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--size", type=int, default=256, help="Frame size of the clips (the demo's).")
    ap.add_argument(
        "--voices", default=",".join(VOICES), help=f"Comma-separated; more: {','.join(MORE_VOICES)}."
    )
    ap.add_argument(
        "--clips", type=Path, default=None, help="Where the clips are made (or found). Default: --out."
    )
    ap.add_argument("--no-levels", action="store_true", help="Skip the level copies of the first clip.")
    args = ap.parse_args()

    from gpu_worker.model.evaluate import evaluate_model
    from gpu_worker.sample import make_sample
    from gpu_worker.sample.errors import SpeechEngineError
    from shared.settings import get_settings

    settings = get_settings()
    out = (args.out or args.model.parent / "voices").absolute()
    out.mkdir(parents=True, exist_ok=True)
    clips = (args.clips or out).absolute()

    cases: list[tuple[str, Path, Path]] = []  # (what, speech, truth video)
    for voice in args.voices.split(","):
        clip = clips / voice.replace(":", "_").replace("+", "_")
        if not (clip / "truth.json").exists():
            try:
                make_sample(
                    clip, seconds=args.seconds, size=args.size, seed=args.seed, voice=voice, settings=settings
                )
            except SpeechEngineError as err:
                print(f"skipped {voice}: {err}")
                continue
        cases.append((voice, clip / "speech.wav", clip / "subject.mp4"))
        if voice == "auto" and not args.no_levels:
            cases += [
                (f"auto, {name}", path, clip / "subject.mp4")
                for name, path in _level_copies(clip / "speech.wav", out)
            ]

    rows = {}
    for what, speech, truth in cases:
        m = evaluate_model(
            args.model,
            settings,
            audio=speech,
            truth_video=truth,
            out_dir=out / "eval",
            max_frames=None,
            previews=0,
        )["new_audio"]
        rows[what] = {k: m.get(k) for k in ("lip_gap_corr_truth", "mouth_envelope_corr", "frames")}
        print(f"{what:<34} lip-gap r {m.get('lip_gap_corr_truth') or float('nan'):6.3f}  "
              f"envelope r {m.get('mouth_envelope_corr') or float('nan'):6.3f}  ({m['frames']} frames)", flush=True)  # fmt: skip
    (out / "voices.json").write_text(
        json.dumps({"model": str(args.model), "seed": args.seed, "rows": rows}, indent=2)
    )
    shutil.rmtree(out / "eval", ignore_errors=True)
    print(f"wrote {out / 'voices.json'}")


if __name__ == "__main__":
    main()
