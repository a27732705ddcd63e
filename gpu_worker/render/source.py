"""The subject's original video, frame by frame at a constant rate, for pasting rendered faces back.

The render stage walks the source forwards and backwards (ping-pong: 0, 1, ..., n-1, n-2, ..., 0, 1, ...)
for as long as the new speech lasts, so frames are served by slot index from a byte-bounded cache:

* on open, the video stream is demuxed once (no decoding) to learn every frame's timestamp and which
  frames are keyframes; that table (a few bytes per frame) maps slots to frames exactly as ffmpeg's
  ``fps`` filter does, so slot k is the frame ``FrameReader(path, fps=...)`` yields k-th;
* forward: the decoder just continues, never seeking;
* backward or a jump: seek to the keyframe at or before the frame, decode forward and keep the last
  ``cache_bytes`` worth of frames up to it, so a backward walk decodes each GOP about once (GOPs longer
  than the cache are decoded once per cache-full of frames).
"""

from __future__ import annotations

import operator
import os
from collections import OrderedDict
from fractions import Fraction
from pathlib import Path
from types import TracebackType

import numpy as np

from gpu_worker.media.errors import MediaDecodeError, MediaError, MediaTimeoutError
from gpu_worker.media.probe import probe
from gpu_worker.media.safety import SAFE_INPUT_OPTIONS
from shared.settings import Settings

__all__ = ["SourceVideo", "output_rate"]

_AV_TIME_BASE = 1_000_000  # container.start_time is in microseconds
_MAX_BROKEN_RUN = 300  # undecodable frames in a row shown as the last good one before giving up


def output_rate(avg_fps: float) -> Fraction:
    """A measured average rate as the rational it stands for: 25.0 -> 25, 29.97003 -> 30000/1001."""
    if not avg_fps > 0:
        raise ValueError(f"frame rate must be positive, got {avg_fps}")
    whole = round(avg_fps)
    if whole and abs(avg_fps - whole) < 0.005:  # container rounding (ms timestamps) of an integer rate
        return Fraction(whole)
    ntsc = round(avg_fps * 1.001)  # 23.976, 29.97, 59.94: N * 1000/1001
    if ntsc and abs(avg_fps - Fraction(ntsc * 1000, 1001)) < 0.005:
        return Fraction(ntsc * 1000, 1001)
    return Fraction(avg_fps).limit_denominator(1001)


def _rescale_near(values: list[int], num: int, den: int) -> np.ndarray:
    """round(v * num / den), ties up, in exact integers: ffmpeg's av_rescale_rnd(AV_ROUND_NEAR_INF)."""
    half = den // 2
    out = [(v * num + half) // den if v >= 0 else -((-v * num + half) // den) for v in values]
    return np.asarray(out, dtype=np.int64)


class SourceVideo:
    """Frames of a video at a constant output rate (the source's own average rate by default), upright
    (rotation metadata applied, as FrameReader and preprocessing see them), by slot index.

    ``seeks`` and ``decoded`` count container seeks and decoded frames (the cost of an access pattern),
    ``decode_errors`` corrupt packets skipped; ``cached_bytes`` is the cache's current size, at most
    ``cache_bytes`` (or one frame, if larger).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        settings: Settings,
        *,
        fps: Fraction | None = None,
        cache_bytes: int = 256 * 2**20,
    ) -> None:
        import av

        self._av = av
        self.info = probe(path, settings, require_video=True)  # safety checks and limits, before decoding
        v = self.info.video
        assert v is not None  # require_video=True guarantees it
        self._shown = Path(self.info.path).name
        self.width, self.height = v.display_width, v.display_height
        self._coded = (v.width, v.height)
        self._turns = -(v.rotation_deg // 90)  # rotation_deg is clockwise; np.rot90 turns counter-clockwise
        self.seeks = 0
        self.decoded = 0
        self.decode_errors = 0  # packets the decoder rejected (corrupt data), skipped
        self._missing: set[int] = set()  # frames known not to decode
        self.cached_bytes = 0
        self._cache_limit = cache_bytes
        self._timeout = float(settings.ffmpeg_timeout_s)  # PyAV applies it to each blocking read
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()  # source frame index -> [H, W, 3] uint8
        # Frames kept per decode run: the cache's capacity, so a backward window never evicts itself.
        self._window = max(1, cache_bytes // (self.width * self.height * 3))
        try:
            self._container = av.open(
                self.info.path,
                options=dict(SAFE_INPUT_OPTIONS),
                timeout=self._timeout,
                metadata_errors="replace",
            )
        except av.error.FFmpegError as exc:
            raise self._error("cannot be opened", exc) from None
        try:
            self._stream = next(
                s for s in self._container.streams.video
                if not (s.disposition & av.stream.Disposition.attached_pic)
            )  # fmt: skip
            self._stream.thread_type = "AUTO"
            self._build_table(fps, v.avg_fps)
        except BaseException:
            self._container.close()
            raise
        self._iter = None  # the decode generator; None until the first seek (the table scan used the demuxer)
        self._pos: int | None = None  # index of the next frame the decoder yields; None: must seek
        self._clean_from = 0  # frames before the keyframe sought to may lack references: never cached

    def _build_table(self, fps: Fraction | float | None, avg_fps: float) -> None:
        """Demux (not decode) the whole stream: timestamps in presentation order, keyframes, end time."""
        pts: list[int] = []
        keys: list[bool] = []
        durs: list[int] = []
        try:
            for packet in self._container.demux(self._stream):
                if packet.size == 0 or packet.is_discard:  # flush packets; samples cut by an edit list
                    continue
                t = packet.pts if packet.pts is not None else packet.dts
                if t is None:
                    raise MediaDecodeError(f"{self._shown}: video frames without timestamps; re-encode it.")
                pts.append(int(t))
                keys.append(bool(packet.is_keyframe))
                durs.append(int(packet.duration or 0))
        except self._av.error.FFmpegError as exc:
            raise self._error("cannot be read", exc) from None
        if not pts:
            raise MediaDecodeError(f"{self._shown}: the video stream has no frames.")
        order = np.argsort(np.asarray(pts, dtype=np.int64), kind="stable")  # decode -> presentation order
        self._pts = np.asarray(pts, dtype=np.int64)[order]  # [n] stream time base
        self._keyframes = np.flatnonzero(np.asarray(keys, dtype=bool)[order])  # [k] frame indices
        tb = Fraction(self._stream.time_base)
        if fps is None:
            n = len(self._pts)
            span = float((self._pts[-1] - self._pts[0]) * tb) if n > 1 else 0.0
            fps = output_rate(avg_fps if avg_fps > 0 else ((n - 1) / span if span > 0 else 25.0))
        fps = Fraction(fps).limit_denominator(1_001_000) if isinstance(fps, float) else Fraction(fps)
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.fps: Fraction = fps
        # The last frame lasts its packet's duration, else the previous interval (ffmpeg's estimate);
        # the fps filter's end of stream is that frame's end.
        last_dur = durs[int(order[-1])] or (int(self._pts[-1] - self._pts[-2]) if len(pts) > 1 else 0)
        if last_dur <= 0:
            last_dur = max(1, round(1 / (fps * tb)))
        # The ffmpeg CLI shifts timestamps so the file starts at 0, then the fps filter rounds each frame
        # to the nearest output tick (ties up) and shows, at tick T, the last frame whose tick is <= T.
        start = self._container.start_time
        offset = _rescale_near([start], tb.denominator, tb.numerator * _AV_TIME_BASE)[0] if start else 0
        num, den = tb.numerator * fps.numerator, tb.denominator * fps.denominator
        ticks = _rescale_near([int(p) - int(offset) for p in self._pts], num, den)  # [n], nondecreasing
        end_tick = int(_rescale_near([int(self._pts[-1]) + last_dur - int(offset)], num, den)[0])
        self._ticks = ticks
        # Slot k is tick k of the file's clock. When the video starts after the file does (audio first),
        # the CLI's constant-rate output repeats the first frame from 0 on; preprocessing's frame indices
        # (FrameReader) include those repeats, so slots do too.
        self._base_tick = min(0, int(ticks[0]))
        self.frame_count: int = max(1, end_tick - self._base_tick)
        # A frame no slot shows (several frames rounded to one tick) is decoded but never converted.
        nxt = np.minimum(np.append(ticks[1:], end_tick), end_tick)
        self._used = ticks < nxt  # [n] bool
        # Source frames per slot, rounded up: a forward walk at a lower rate skips up to this many, which
        # it decodes through rather than seeking to a keyframe just past the skipped ones.
        self._stride = -(-len(ticks) // self.frame_count)

    def frame_index(self, k: int) -> int:
        """Index (presentation order) of the source frame shown in slot k."""
        k = operator.index(k)
        if not 0 <= k < self.frame_count:
            raise IndexError(f"slot {k} out of range: {self._shown} has {self.frame_count} at {self.fps} fps")
        tick = max(self._base_tick + k, int(self._ticks[0]))  # the repeats before the start show its frame
        return int(np.searchsorted(self._ticks, tick, side="right")) - 1

    def frame(self, k: int) -> np.ndarray:
        """RGB uint8 [height, width, 3] of slot k: a read-only array that stays valid after later calls."""
        i = self.frame_index(k)
        if self._container is None:
            raise MediaError(f"{self._shown}: the source video is closed.")
        # A frame the decoder cannot produce (corrupt data, concealed like the ffmpeg CLI does) is shown
        # as the fps filter shows it: the last frame before it that did decode.
        for j in range(i, max(-1, i - _MAX_BROKEN_RUN), -1):
            if j in self._missing:
                continue
            cached = self._cache.get(j)
            if cached is None:
                try:
                    self._fill(j)
                except self._av.error.FFmpegError as exc:
                    self._pos = None  # the decoder's state is unknown: the next miss seeks
                    raise self._error(f"frame {j} cannot be read", exc) from None
                cached = self._cache.get(j)
            if cached is not None:
                self._cache.move_to_end(j)
                return cached
            self._missing.add(j)
        raise MediaDecodeError(
            f"{self._shown}: the video cannot be decoded around slot {k} ({self.decode_errors} decoding errors)."
        )

    def _fill(self, i: int) -> None:
        """Decode so that frame i is cached: continue forward when that decodes no more frames than a seek
        to the keyframe before i would (or i is at most a slot's stride ahead: a forward walk never
        seeks), else seek."""
        start = self._keyframe_at_or_before(i)
        if self._pos is not None and self._pos <= i and i - self._pos <= max(i - start, self._stride):
            self._decode_to(i, sought=None)
            return
        while True:
            self._seek(start)
            if self._decode_to(i, sought=start) or start == 0:
                return
            start = self._keyframe_at_or_before(start - 1)  # the demuxer landed past it: go further back

    def _keyframe_at_or_before(self, i: int) -> int:
        # In presentation order, so an open-GOP leading frame (shown before its I-frame) seeks to the
        # previous GOP, whose frames it references.
        j = int(np.searchsorted(self._keyframes, i, side="right")) - 1
        return int(self._keyframes[j]) if j >= 0 else 0

    def _seek(self, start: int) -> None:
        if self._iter is not None:
            self._iter.close()
        self._container.seek(int(self._pts[start]), backward=True, stream=self._stream)
        self.seeks += 1
        self._iter = self._decoded_frames()
        self._pos = start
        self._clean_from = start

    def _decode_to(self, i: int, sought: int | None) -> bool:
        """Decode until frame i, caching the used frames of the last window up to it (converting costs
        more than decoding, and earlier frames would only be evicted). False when the first frame after
        a seek to ``sought`` comes later than it (the demuxer's seek overshot)."""
        keep_from = max(i - self._window + 1, self._clean_from)
        for frame in self._iter:
            self.decoded += 1
            idx = self._index_of(frame)
            if sought is not None:
                if idx > sought > 0:
                    return False
                sought = None
            self._pos = idx + 1
            if idx >= keep_from and (self._used[idx] or idx == i) and idx not in self._cache:
                self._put(idx, self._rgb(frame))
            if idx >= i:
                return True
        self._pos = None  # end of stream: the next miss seeks
        return True

    def _decoded_frames(self):
        """Frames from the current position on. A packet the decoder rejects is skipped and counted, as the
        ffmpeg CLI (and so FrameReader) does; the frames that needed it come out concealed or not at all."""
        for packet in self._container.demux(self._stream):  # ends with flush packets that drain the decoder
            try:
                frames = packet.decode()
            except self._av.error.ExitError:
                raise
            except self._av.error.FFmpegError:
                self.decode_errors += 1
                continue
            yield from frames

    def _index_of(self, frame) -> int:
        if frame.pts is None:  # no timestamp: assume decode order continues
            return min(self._pos or 0, len(self._pts) - 1)
        return max(0, int(np.searchsorted(self._pts, frame.pts, side="right")) - 1)

    def _rgb(self, frame) -> np.ndarray:
        if (frame.width, frame.height) != self._coded:  # a mid-stream size change: keep one size
            rgb = frame.to_ndarray(format="rgb24", width=self._coded[0], height=self._coded[1])
        else:
            rgb = frame.to_ndarray(format="rgb24")  # [h, w, 3], a view on the converted frame's buffer
        rgb = np.rot90(rgb, self._turns).copy() if self._turns else rgb.copy()  # [H, W, 3] upright, owned
        rgb.flags.writeable = False  # handed out and shared between slots: nobody may paint on it
        return rgb

    def _put(self, idx: int, rgb: np.ndarray) -> None:
        while self._cache and self.cached_bytes + rgb.nbytes > self._cache_limit:
            _, old = self._cache.popitem(last=False)  # least recently used
            self.cached_bytes -= old.nbytes
        self._cache[idx] = rgb
        self.cached_bytes += rgb.nbytes

    def _error(self, what: str, exc: Exception) -> MediaError:
        """A PyAV failure as the media layer's typed error (never a raw av exception)."""
        if isinstance(exc, self._av.error.ExitError):  # the interrupt callback fired: a read stalled
            return MediaTimeoutError(f"reading {self._shown} stalled for more than {self._timeout:.0f} s.")
        return MediaDecodeError(f"{self._shown}: {what} ({exc}).")

    def close(self) -> None:
        if self._container is not None:
            if self._iter is not None:
                self._iter.close()
                self._iter = None
            self._container.close()
            self._container = None
        self._cache.clear()
        self.cached_bytes = 0

    def __enter__(self) -> SourceVideo:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
