"""Quality checks on every render, written beside the video as OUT.qc.json (docs/RENDER.md, "QC").

Measured on the output itself, not on what the model meant to draw: a face landmarker (its own VIDEO
mode instance, fed this render's frames only) looks at the face region of every output frame. From it:
the share of frames where a face is found, and the mouth opening (inner-lip gap / eye distance) per
frame, correlated with the speech envelope (RMS per output frame). Where the model folder holds an AVE
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
    # low_sync: the best mouth-opening / speech-envelope correlation within +-max_lag_s stays under this.
    # A model that ignores the audio gives |r| < 0.1; the preview model on its own voice gives 0.9.
    "low_sync_r": 0.2,
    "max_lag_s": 0.2,
    # silent_audio: the track's loud speech (p95 of 20 ms frame levels) is quieter than this
    "silent_speech_db": -50.0,
    # clipped_audio: more than this share of the track's samples sit at full scale
    "clipped_share": 0.001,
}
PENDING_FACES = 32  # faces queued for the landmarker at most (32 x 192 KB at 256 px)
SYNC_MAX_FRAMES = 1500  # AVE sync over the first minute (25 fps frames): mouth crops are kept for it
MIN_CORR_FRAMES = 25  # fewer frames with a face than this: no correlation is reported


def lagged_corr(x: np.ndarray, y: np.ndarray, max_lag: int) -> tuple[float | None, float | None, int]:
    """Pearson r of x and y at lag 0, and the best r over lags -max_lag..max_lag (y shifted by the lag)
    with that lag; NaNs in x are left out. -> (r0, best r, best lag)."""
    from gpu_worker.model.metrics import pearson

    def at(lag: int) -> float | None:
        a, b = (x[: len(x) - lag], y[lag:]) if lag >= 0 else (x[-lag:], y[: len(y) + lag])
        ok = np.isfinite(a) & np.isfinite(b)
        return pearson(a[ok], b[ok]) if ok.sum() >= MIN_CORR_FRAMES else None

    r0 = at(0)
    best, best_lag = r0, 0
    for lag in range(-max_lag, max_lag + 1):
        r = at(lag)
        if r is not None and (best is None or r > best):
            best, best_lag = r, lag
    return r0, best, best_lag


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

    def report(self, track, envelope: np.ndarray, mel_windows: np.ndarray | None) -> dict:
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
                opening, np.asarray(envelope, np.float64)[:n], round(t["max_lag_s"] * self.fps)
            )
        missing = np.flatnonzero(~found) if measured else np.zeros(0, np.int64)
        qc: dict = {
            "frames": n,
            "face_share": float(found.mean()) if measured else None,
            "frames_without_face": int(missing.size) if measured else None,
            "first_frames_without_face": missing[:10].tolist(),
            "mouth_envelope_corr": r0,
            "mouth_envelope_corr_best": best,
            "mouth_envelope_lag_s": round(lag / self.fps, 3),
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
        elif measured and (best is None or best < t["low_sync_r"]):
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
