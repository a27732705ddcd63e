"""Stream RGB frames out of and into video files through ffmpeg pipes, one frame in memory at a time.

``FrameReader`` decodes (autorotated, optionally scaled / resampled to a constant rate) to ``[H, W, 3]``
uint8 RGB arrays; ``FrameWriter`` encodes such arrays to H.264 (+ AAC audio) and only puts the file at
its final path when everything succeeded. ``write_wav`` / ``load_audio`` live in gpu_worker.media.audio
and are re-exported here because callers think of them as the same I/O layer.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from types import TracebackType

import numpy as np

from gpu_worker.media import process
from gpu_worker.media.audio import load_audio, write_wav
from gpu_worker.media.errors import MediaDecodeError, MediaError, MediaTimeoutError
from gpu_worker.media.probe import MediaInfo, probe
from gpu_worker.media.safety import SAFE_INPUT_OPTIONS, ffmpeg_url
from shared.settings import Settings, get_settings

__all__ = ["FrameReader", "FrameWriter", "load_audio", "write_wav"]


class FrameReader:
    """Iterate over the frames of a video as RGB uint8 arrays ``[H, W, 3]``, lazily.

    ``size=(width, height)`` scales in ffmpeg; ``fps`` resamples to that constant rate (frames dropped or
    repeated by timestamp); without ``fps`` every decoded frame is delivered once, as stored (VFR stays
    VFR). Rotation metadata is applied, so frames come out as a viewer sees them. Use as a context
    manager or iterate to the end; breaking out of a ``with`` block stops ffmpeg at once.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        size: tuple[int, int] | None = None,
        fps: float | None = None,
        settings: Settings | None = None,
    ) -> None:
        self.settings = settings or get_settings()
        self.info: MediaInfo = probe(path, self.settings, require_video=True)
        v = self.info.video
        assert v is not None  # probe(require_video=True) guarantees it
        if size is not None and (size[0] <= 0 or size[1] <= 0):
            raise ValueError(f"size must be positive (width, height), got {size}")
        if fps is not None and fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.width, self.height = size or (v.display_width, v.display_height)
        self.fps: float = float(fps) if fps else v.avg_fps
        self.frame_count_estimate: int = max(1, round(v.duration_s * fps)) if fps else v.frame_count
        self._fps_requested = fps is not None
        self._proc: process.Process | None = None
        self._shown = Path(self.info.path).name

    def _command(self) -> list[str]:
        import ffmpeg

        stream = ffmpeg.input(ffmpeg_url(Path(self.info.path)), **SAFE_INPUT_OPTIONS)["v:0"]
        if self._fps_requested:
            stream = stream.filter("fps", fps=self.fps)
        if (self.width, self.height) != (self.info.video.display_width, self.info.video.display_height):
            stream = stream.filter("scale", self.width, self.height)
        stream = stream.filter("format", "rgb24")  # also makes a single labelled output stream
        out_args = {"format": "rawvideo", "pix_fmt": "rgb24", "frames:v": self.settings.media_max_frames}
        if not self._fps_requested:
            out_args["fps_mode"] = "passthrough"  # deliver stored frames as-is, no dup/drop
        return process.compile_cmd(stream.output("pipe:1", **out_args))

    def __enter__(self) -> FrameReader:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._proc is not None:
            self._proc.close()
            self._proc = None

    def __iter__(self) -> Iterator[np.ndarray]:
        self.close()  # a second iteration starts from the beginning
        proc = process.Process(
            self._command(), timeout=self.settings.ffmpeg_timeout_s, stdin=False, stdout=True
        )
        self._proc = proc
        nbytes = self.width * self.height * 3
        try:
            while True:
                with proc.busy():
                    buf = proc.proc.stdout.read(nbytes)
                if len(buf) == nbytes:
                    yield np.frombuffer(buf, np.uint8).reshape(self.height, self.width, 3)  # [H, W, 3]
                    continue
                proc.finish(self._shown, "decode")
                if buf:
                    raise MediaDecodeError(f"{self._shown}: the last frame was cut short.")
                return
        finally:
            self.close()


class FrameWriter:
    """Encode RGB frames ``[H, W, 3]`` uint8 to an H.264 video, optionally muxing an audio file as AAC.

    Frames go to a temporary file beside ``path``; only a clean ``close()`` (or a ``with`` block left
    without an exception) moves it to ``path``. Audio shorter than the video is padded with silence,
    longer audio is cut at the last frame, so the result always lasts ``frames / fps`` seconds.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        fps: float | Fraction,
        size: tuple[int, int],
        audio: str | os.PathLike[str] | None = None,
        crf: int = 18,
        preset: str = "medium",
        pix_fmt: str = "yuv420p",
        settings: Settings | None = None,
    ) -> None:
        self.settings = settings or get_settings()
        self.path = Path(path).absolute()
        self.width, self.height = size
        if fps <= 0 or self.width <= 0 or self.height <= 0:
            raise ValueError(f"fps and size must be positive, got fps={fps} size={size}")
        if pix_fmt in ("yuv420p", "nv12") and (self.width % 2 or self.height % 2):
            raise ValueError(f"{pix_fmt} needs an even width and height, got {size}")
        # an exact rational rate (29.97 is 30000/1001): frame times and the muxed duration follow it
        self.fps = fps if isinstance(fps, Fraction) else Fraction(fps).limit_denominator(1001)
        self.frames_written = 0
        self._tmp = self.path.with_name(f".{self.path.stem}.partial-{uuid.uuid4().hex[:8]}{self.path.suffix}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Checked now, not at close(): a bad audio file should fail before minutes of rendering.
        self._audio = (
            Path(probe(audio, self.settings, require_video=False, require_audio=True).path) if audio else None
        )
        self._proc = process.Process(
            self._command(crf, preset, pix_fmt),
            timeout=self.settings.ffmpeg_timeout_s,
            stdin=True,
            stdout=False,
        )
        self._closed = False

    def _command(self, crf: int, preset: str, pix_fmt: str) -> list[str]:
        import ffmpeg

        video = ffmpeg.input(
            "pipe:0",
            format="rawvideo",
            pix_fmt="rgb24",
            s=f"{self.width}x{self.height}",
            framerate=str(self.fps),
        )
        out = video.output(
            str(self._tmp), vcodec="libx264", crf=crf, preset=preset, pix_fmt=pix_fmt, movflags="+faststart"
        )
        return process.compile_cmd(out, uses_stdin=True)

    def _mux_audio(self, video: Path, dst: Path) -> None:
        """Second, cheap pass (video stream copied): add the audio padded with silence and cut at exactly
        frames / fps. Muxing while encoding would need ``-shortest``, which overshoots by up to a second."""
        import ffmpeg

        assert self._audio is not None
        v = ffmpeg.input(ffmpeg_url(video), **SAFE_INPUT_OPTIONS)["v:0"]
        a = ffmpeg.input(ffmpeg_url(self._audio), **SAFE_INPUT_OPTIONS)["a:0"].filter("apad")
        duration = float(self.frames_written / self.fps)
        out = ffmpeg.output(
            v, a, str(dst), vcodec="copy", acodec="aac", t=f"{duration:.6f}", movflags="+faststart"
        )
        process.run(
            process.compile_cmd(out),
            timeout=self.settings.ffmpeg_timeout_s,
            shown=self.path.name,
            action="mux",
        )

    def write(self, frame: np.ndarray) -> None:
        """Append one RGB frame [H, W, 3] uint8 (exactly the size given at construction)."""
        if self._closed:
            raise MediaError("FrameWriter is closed.")
        if frame.shape != (self.height, self.width, 3) or frame.dtype != np.uint8:
            raise ValueError(
                f"expected a uint8 frame of shape {(self.height, self.width, 3)}, got {frame.dtype} {frame.shape}"
            )
        try:
            with self._proc.busy():
                self._proc.proc.stdin.write(np.ascontiguousarray(frame).data)
        except OSError:  # BrokenPipeError: ffmpeg died (bad encoder settings, disk full, killed)
            self._proc.wait()
            err = self._failure()
            self.abort()
            raise err from None
        self.frames_written += 1

    def _failure(self) -> MediaError:
        if self._proc.timed_out:
            return MediaTimeoutError(
                f"ffmpeg stalled for more than {self.settings.ffmpeg_timeout_s:.0f} s encoding."
            )
        return process.classify_ffmpeg_error(self._proc.stderr_text(), self.path.name, "encode")

    def close(self) -> None:
        """Finish encoding and move the file into place."""
        if self._closed:
            return
        if self.frames_written == 0:
            self.abort()
            raise MediaError(f"No frames were written to {self.path.name}.")
        with contextlib.suppress(OSError), self._proc.busy():  # flushing may hit a dead ffmpeg: judged below
            self._proc.proc.stdin.close()
        rc = self._proc.wait()
        if rc != 0 or self._proc.timed_out:
            err = self._failure()
            self.abort()
            raise err
        self._closed = True
        self._proc.close()
        if self._audio is None:
            os.replace(self._tmp, self.path)
            return
        muxed = self._tmp.with_name(self._tmp.stem + "-av" + self._tmp.suffix)
        try:
            self._mux_audio(self._tmp, muxed)
            os.replace(muxed, self.path)
        finally:
            muxed.unlink(missing_ok=True)
            self._tmp.unlink(missing_ok=True)

    def abort(self) -> None:
        """Stop ffmpeg and delete the partial file; ``path`` is left untouched."""
        self._closed = True
        self._proc.close()
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> FrameWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is not None:
            self.abort()
        else:
            self.close()
