"""Running ffmpeg/ffprobe: a wall-clock limit on every run and stderr turned into typed errors."""

from __future__ import annotations

import contextlib
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from typing import IO

from gpu_worker.media.errors import (
    MediaDecodeError,
    MediaError,
    MediaTimeoutError,
    NotMediaError,
    TruncatedMediaError,
    UnsafeMediaError,
)

_STDERR_KEEP = 2000  # characters of ffmpeg's stderr quoted in an error message


def classify_ffmpeg_error(stderr: str, shown: str, action: str = "decode") -> MediaError:
    """Map ffmpeg's error text to the most specific MediaError."""
    low = stderr.lower()
    tail = stderr.strip()[-_STDERR_KEEP:]
    if "not on whitelist" in low:
        return UnsafeMediaError(f"{shown}: refers to a protocol or format that is not accepted ({tail}).")
    # "moov atom not found" is deliberately absent: the mov demuxer says it about any non-MP4 file named
    # *.mp4 too; callers that can look at the file decide (see safety.looks_like_mp4).
    if "truncat" in low or "partial file" in low:
        return TruncatedMediaError(f"{shown} is truncated or incomplete ({tail}).")
    if "invalid data found when processing input" in low:
        return NotMediaError(f"{shown} is not a recognised audio or video file ({tail}).")
    return MediaDecodeError(f"ffmpeg could not {action} {shown}: {tail or 'no error output'}")


def run(cmd: Sequence[str], *, timeout: float, shown: str, action: str = "decode") -> bytes:
    """Run to completion, return stdout; raise MediaTimeoutError or a classified MediaError on failure."""
    try:
        proc = subprocess.run(list(cmd), capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise MediaTimeoutError(f"ffmpeg took longer than {timeout:.0f} s on {shown}; stopped.") from None
    if proc.returncode != 0:
        raise classify_ffmpeg_error(proc.stderr.decode(errors="replace"), shown, action)
    return proc.stdout


class Process:
    """A streaming ffmpeg child: stdin/stdout pipes for frames, stderr to a temp file (no pipe deadlock).

    The time limit applies to each blocking exchange (``with proc.busy(): read/write/wait``), not to the
    child's lifetime: a slow consumer (face tracking on every frame) may legitimately keep a reader open
    for hours, but ffmpeg itself must never keep us waiting longer than ``timeout`` seconds at a time.
    """

    def __init__(self, cmd: Sequence[str], *, timeout: float | None, stdin: bool, stdout: bool) -> None:
        self._stderr: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the child
        self.timed_out = False
        self._timeout = timeout
        self._busy_since: float | None = None
        self._stop = threading.Event()
        self.proc = subprocess.Popen(
            list(cmd),
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE if stdout else subprocess.DEVNULL,
            stderr=self._stderr,
        )
        if timeout is not None:
            threading.Thread(target=self._watch, daemon=True, name="ffmpeg-watchdog").start()

    def _watch(self) -> None:
        while not self._stop.wait(0.2):
            since = self._busy_since
            if since is not None and time.monotonic() - since > self._timeout:
                self.timed_out = True
                self.proc.kill()
                return

    @contextlib.contextmanager
    def busy(self) -> Iterator[None]:
        """Mark a blocking exchange with the child; the watchdog kills it if this lasts too long."""
        self._busy_since = time.monotonic()
        try:
            yield
        finally:
            self._busy_since = None

    def stderr_text(self) -> str:
        self._stderr.flush()
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")

    def wait(self) -> int:
        with self.busy():
            return self.proc.wait()

    def finish(self, shown: str, action: str = "decode") -> None:
        """Wait for the child to end; a stall past the time limit or a failure becomes a typed MediaError."""
        rc = self.wait()
        if self.timed_out:
            raise MediaTimeoutError(f"ffmpeg stalled for more than {self._timeout:.0f} s ({action} {shown}).")
        if rc != 0:
            raise classify_ffmpeg_error(self.stderr_text(), shown, action)

    def kill(self) -> None:
        """Stop the child (idempotent) and release its pipes and the watchdog."""
        self._stop.set()
        if self.proc.poll() is None:
            self.proc.kill()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):  # a broken pipe on close is expected after kill
                    pipe.close()
        self.proc.wait()

    def close(self) -> None:
        self.kill()
        self._stderr.close()


def compile_cmd(stream_spec, *, uses_stdin: bool = False, extra_global: Sequence[str] = ()) -> list[str]:
    """ffmpeg-python graph -> argv with our binary, quiet logging and (unless stdin carries frames) -nostdin
    so ffmpeg never waits on the terminal."""
    import ffmpeg

    from gpu_worker.media.binaries import ffmpeg_exe

    extra = ["-hide_banner", "-loglevel", "error", *extra_global] + ([] if uses_stdin else ["-nostdin"])
    return ffmpeg.compile(stream_spec.global_args(*extra), cmd=ffmpeg_exe(), overwrite_output=True)
