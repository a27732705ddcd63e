"""Quality checks on every render, written beside the video as OUT.qc.json (docs/RENDER.md, "QC").

Measured on the output itself, not on what the model meant to draw: a face landmarker (its own VIDEO
mode instance, fed this render's frames only) looks at the face region of every output frame. From it:
the share of frames where a face is found, and the mouth opening (inner-lip gap / eye distance) per
frame, correlated with the speech envelope (RMS per output frame) and read against Whisper's word timings
(the captions' words: a mouth at rest in the pauses, moving during words; ``word_checks``), which
together decide ``low_sync`` (``sync_failures``; thresholds calibrated on good and bad renders of the
sample subject, docs/RENDER.md). Where the model folder holds an AVE
checkpoint, its towers give a sync confidence on the rendered mouths against the track's mel windows.
From the track: its loud-speech level, peak and clipped share. Flags name what a person should look
at; every threshold is in ``THRESHOLDS`` and documented.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field

import numpy as np

from gpu_worker.model.dataparser import mouth_opening

# Flags and their thresholds (docs/RENDER.md explains each choice).
THRESHOLDS = {
    # no_face_frames: more than this share of the checked frames shows no face to the landmarker
    "no_face_share": 0.02,
    # low_sync (sync_failures): the best mouth-opening / speech-envelope correlation over the plausible
    # lags (the mouth up to max_lag_s ahead of the sound, up to max_mouth_delay_s behind it) under this
    # (good renders of the sample 0.87-0.91, renders driven by other / zero / late features 0.31 at most) ...
    "low_sync_r": 0.4,
    "max_lag_s": 0.2,
    "max_mouth_delay_s": 0.12,
    # ... or the word checks (word_checks) fail: judged with this many words or more
    "min_words": 5,
    "max_silence_open": 0.25,  # median opening in long silences, in the render's range (good: <= 0.13)
    "max_still_word_share": 0.35,  # share of words said with a still mouth (good: <= 0.17)
    # silent_audio: the track's loud speech (p95 of 20 ms frame levels) is quieter than this
    "silent_speech_db": -50.0,
    # clipped_audio: more than this share of the track's samples sit at full scale
    "clipped_share": 0.001,
    # word checks against Whisper's word timings (word_checks)
    # the mouth's p5..p95 opening range under this (x eye distance): it never moves (zero features: 0.025-0.03,
    # good renders: 0.09 and more)
    "min_mouth_range": 0.04,
    "long_silence_s": 0.4,  # a gap between words this long is a silence the mouth should rest in
    "silence_margin_s": 0.08,  # left out at each side of a silence (the lips close after / open before)
    "min_silence_frames": 5,
    "min_word_s": 0.15,  # shorter words are not judged for stillness
    "still_word_range": 0.2,  # a word's opening range (in the render's range) under this: said while still
    "mbp_window_s": 0.08,  # the lips must meet within this of an m/b/p word's start
    "closed_level": 0.25,  # "closed": under this in the render's range
}
PENDING_FACES = 32  # faces queued for the landmarker at most (32 x 192 KB at 256 px)
SYNC_MAX_FRAMES = 1500  # AVE sync over the first minute (25 fps frames): mouth crops are kept for it
MIN_CORR_FRAMES = 25  # fewer frames with a face than this: no correlation is reported


def lagged_corr(
    x: np.ndarray, y: np.ndarray, max_lag: int, min_lag: int | None = None
) -> tuple[float | None, float | None, int]:
    """Pearson r of x and y at lag 0, and the best r over lags min_lag..max_lag (default -max_lag; y
    shifted by the lag: a positive lag pairs x[i] with y[i + lag], x leading) with that lag; NaNs in x
    are left out. -> (r0, best r, best lag)."""
    from gpu_worker.model.metrics import pearson

    def at(lag: int) -> float | None:
        a, b = (x[: len(x) - lag], y[lag:]) if lag >= 0 else (x[-lag:], y[: len(y) + lag])
        ok = np.isfinite(a) & np.isfinite(b)
        return pearson(a[ok], b[ok]) if ok.sum() >= MIN_CORR_FRAMES else None

    r0 = at(0)
    best, best_lag = r0, 0
    for lag in range(-max_lag if min_lag is None else min_lag, max_lag + 1):
        r = at(lag)
        if r is not None and (best is None or r > best):
            best, best_lag = r, lag
    return r0, best, best_lag


def _frames_of(start_s: float, end_s: float, fps: float, n: int) -> slice:
    return slice(max(0, int(np.floor(start_s * fps))), min(n, int(np.ceil(end_s * fps))))


def word_checks(opening: np.ndarray, fps: float, words: list[tuple[float, float, str]] | None) -> dict:
    """The mouth against Whisper's word timings (docs/RENDER.md): how open it is in long silences and
    during words, how many words it says without moving, and whether the lips close at the start of
    words that begin with m, b or p. Openings are in the render's own range: 0 at its 5th percentile,
    1 at its 95th (a mouth that never moves has a range of about 0: ``mouth_range``)."""
    t = THRESHOLDS
    o = np.asarray(opening, np.float64)
    n = o.size
    found = np.isfinite(o)
    out: dict = {"words": 0 if words is None else len(words), "mouth_range": None, "silence_open": None,
                 "word_open": None, "open_contrast": None, "still_word_share": None, "mbp_words": 0,
                 "mbp_closed_share": None, "closed_share": None}  # fmt: skip
    if found.sum() < MIN_CORR_FRAMES:
        return out
    lo, hi = np.percentile(o[found], [5, 95])
    out["mouth_range"] = round(float(hi - lo), 4)
    if not words:
        return out
    norm = (o - lo) / max(hi - lo, t["min_mouth_range"])
    in_word = np.zeros(n, bool)
    for start, end, _ in words:
        in_word[_frames_of(start, end, fps, n)] = True
    # long silences: gaps between words (and before the first, after the last) of long_silence_s or
    # more, less a margin at each side where the mouth still closes or already opens
    silent = np.zeros(n, bool)
    bounds = [(0.0, words[0][0])] + [(a[1], b[0]) for a, b in zip(words, words[1:], strict=False)]
    bounds.append((words[-1][1], n / fps))
    m = t["silence_margin_s"]
    for a, b in bounds:
        if b - a >= t["long_silence_s"]:
            silent[_frames_of(a + m, b - m, fps, n)] = True
    silent &= ~in_word & found
    if silent.sum() >= t["min_silence_frames"] and (in_word & found).sum() >= MIN_CORR_FRAMES:
        out["silence_open"] = round(float(np.median(norm[silent])), 3)
        out["word_open"] = round(float(np.median(norm[in_word & found])), 3)
        out["open_contrast"] = round(out["word_open"] - out["silence_open"], 3)
    # words said with a still mouth: its range over the word under still_word_range of the render's range
    still = counted = 0
    for start, end, _ in words:
        if end - start < t["min_word_s"]:
            continue
        seg = norm[_frames_of(start, end, fps, n)]
        seg = seg[np.isfinite(seg)]
        if seg.size >= 2:
            counted += 1
            still += float(seg.max() - seg.min()) < t["still_word_range"]
    if counted:
        out["still_word_share"] = round(still / counted, 3)
    # m, b, p: the lips meet at the word's start (the lowest opening around it near the render's closed level)
    closed = mbp = 0
    w = t["mbp_window_s"]
    for start, _end, text in words:
        letters = "".join(ch for ch in text.lower() if ch.isalpha())
        if not letters or letters[0] not in "mbp":
            continue
        seg = norm[_frames_of(start - w, start + w, fps, n)]
        seg = seg[np.isfinite(seg)]
        if seg.size:
            mbp += 1
            closed += float(seg.min()) < t["closed_level"]
    out["mbp_words"] = mbp
    if mbp:
        out["mbp_closed_share"] = round(closed / mbp, 3)
        # how often the mouth is that closed at any moment of speech: what chance alone gives
        speech = norm[in_word & found]
        out["closed_share"] = round(float((speech < t["closed_level"]).mean()), 3) if speech.size else None
    return out


def sync_failures(best_r: float | None, checks: dict | None) -> list[str]:
    """Which sync checks a render fails (any one raises ``low_sync``; docs/RENDER.md has the figures
    that set each threshold):

    - ``envelope``: the mouth-opening / speech-envelope r, best over the plausible lags, under
      ``low_sync_r`` (or not measurable: fewer than 25 frames with a face);
    - ``still_mouth``: the mouth's p5..p95 opening range under ``min_mouth_range`` while there is speech;
    - ``open_in_silence``: with ``min_words`` words or more and long silences between them, the mouth's
      median opening in those silences is over ``max_silence_open`` of its range (a mouth at rest is
      near the bottom of it);
    - ``still_words``: more than ``max_still_word_share`` of the words are said with a still mouth."""
    t = THRESHOLDS
    out = []
    if best_r is None or best_r < t["low_sync_r"]:
        out.append("envelope")
    if checks is None:
        return out
    if checks["mouth_range"] is not None and checks["mouth_range"] < t["min_mouth_range"]:
        out.append("still_mouth")
    if checks["words"] >= t["min_words"]:
        silence = checks["silence_open"]
        if silence is not None and silence > t["max_silence_open"]:
            out.append("open_in_silence")
        still = checks["still_word_share"]
        if still is not None and still > t["max_still_word_share"]:
            out.append("still_words")
    return out


@dataclass
class QualityChecks:
    """Collects per-frame measures during a render (bounded: a float per frame, mouth crops for the first
    minute) and turns them into the QC report at the end."""

    fps: float
    settings: object
    towers: tuple | None = None  # AVE (audio tower, lip tower) where the model has one
    face_size: int = 256
    openings: list[float] = field(default_factory=list)  # per output frame; NaN: no face found
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stack = ExitStack()
        self._tracker = None
        self._crops: dict[int, np.ndarray] = {}  # model (25 fps) frame -> mouth crop [32, 64] uint8
        # The landmarker (about 9 ms a frame on a CPU) runs on one worker thread, in frame order, beside
        # the render: on a GPU worker it is hidden behind the head render. At most PENDING_FACES wait.
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="render-qc")
        self._pending: deque[Future] = deque()

    def __enter__(self) -> QualityChecks:
        from gpu_worker.model.metrics import mouth_tracker

        # one landmarker for this stream alone: a tracker shared between streams pulls them together
        self._tracker = self._stack.enter_context(mouth_tracker(self.settings))
        if self._tracker is None:
            self.notes.append("face landmarker unavailable: face share and mouth sync not measured")
        return self

    def __exit__(self, *exc) -> None:
        self._worker.shutdown(wait=True, cancel_futures=True)
        self._stack.close()

    def add_face(self, face: np.ndarray) -> None:
        """The face region of the next output frame [S, S, 3] uint8 (measured on the worker thread)."""
        if self._tracker is None:
            self.openings.append(np.nan)
            return
        self.openings.append(np.nan)  # filled in by the worker, in order
        self._pending.append(self._worker.submit(self._measure, len(self.openings) - 1, face))
        while len(self._pending) > PENDING_FACES:  # back-pressure: bounded memory, errors surface here
            self._pending.popleft().result()

    def _measure(self, index: int, face: np.ndarray) -> None:
        lms = self._tracker(face)
        if lms is not None:
            self.openings[index] = float(mouth_opening(lms[None])[0])

    def wait(self) -> None:
        """Every frame handed in has been measured (re-raises the worker's error, if any)."""
        while self._pending:
            self._pending.popleft().result()

    def add_mouth(self, model_frame: int, crop: np.ndarray) -> None:
        """A rendered mouth crop [32, 64] uint8 for the AVE sync, at the model's 25 fps frame index."""
        if self.towers is not None and model_frame < SYNC_MAX_FRAMES and model_frame not in self._crops:
            self._crops[model_frame] = crop

    @property
    def wants_mouths(self) -> bool:
        return self.towers is not None

    def report(self, track, envelope: np.ndarray, mel_windows: np.ndarray | None, words=None) -> dict:
        """The QC dict: ``envelope`` [F] RMS per output frame, ``mel_windows`` [M, 80, 16] (25 fps) for the
        AVE sync (None without an AVE)."""
        self.wait()
        t = THRESHOLDS
        opening = np.asarray(self.openings, np.float64)
        n = opening.size
        measured = self._tracker is not None and n > 0
        found = np.isfinite(opening)
        silent = track.speech_level_db < t["silent_speech_db"]
        r0 = best = None
        lag = 0
        if measured and not silent:
            r0, best, lag = lagged_corr(
                opening, np.asarray(envelope, np.float64)[:n], round(t["max_lag_s"] * self.fps),
                -round(t["max_mouth_delay_s"] * self.fps),
            )  # fmt: skip
        checks = word_checks(opening, self.fps, words) if measured and not silent else None
        failures = sync_failures(best, checks) if measured and not silent else []
        missing = np.flatnonzero(~found) if measured else np.zeros(0, np.int64)
        qc: dict = {
            "frames": n,
            "face_share": float(found.mean()) if measured else None,
            "frames_without_face": int(missing.size) if measured else None,
            "first_frames_without_face": missing[:10].tolist(),
            "mouth_envelope_corr": r0,
            "mouth_envelope_corr_best": best,
            "mouth_envelope_lag_s": round(lag / self.fps, 3),
            "sync_checks": checks,
            "sync_failures": failures,
            "sync": self._sync(mel_windows),
            "audio": {
                "duration_s": round(track.duration_s, 3),
                "speech_level_db": round(track.speech_level_db, 1),
                "peak": round(track.peak, 4),
                "clipped_share": track.clipped_fraction,
            },
            "thresholds": dict(t),
            "notes": list(self.notes),
        }
        flags = []
        if measured and 1 - qc["face_share"] > t["no_face_share"]:
            flags.append("no_face_frames")
        if silent:
            flags.append("silent_audio")
            qc["notes"].append("the track has no audible speech: the mouth cannot follow it")
        elif measured and failures:
            flags.append("low_sync")
        if track.clipped_fraction > t["clipped_share"]:
            flags.append("clipped_audio")
        qc["flags"] = flags
        return qc

    def _sync(self, mel_windows: np.ndarray | None) -> dict | None:
        """The AVE sync of the rendered mouths (25 fps, first minute) with the track's mel windows."""
        if self.towers is None or mel_windows is None or not self._crops:
            return None
        from gpu_worker.model.eval.sync import ave_sync

        m = min(len(mel_windows), max(self._crops) + 1)
        crops = np.zeros((m, *next(iter(self._crops.values())).shape), np.uint8)  # [M, 32, 64]
        last = None
        for i in range(m):  # frames the output skipped (a rate under 25 fps) repeat the previous mouth
            last = self._crops.get(i, last)
            if last is not None:
                crops[i] = last
        result = ave_sync(self.towers, np.asarray(mel_windows[:m]), crops)
        return None if result is None else {**result, "frames": m}
