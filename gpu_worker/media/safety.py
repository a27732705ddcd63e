"""Checks every input passes before ffmpeg or PyAV sees it.

ffmpeg happily opens URLs, device files, playlists (HLS, ffconcat, DASH) that pull in *other* files,
and image sequences named by ``%d`` patterns. A user-supplied path must never reach any of that, so:

* the path must name an existing regular file (after following symlinks: a link to /dev/zero is refused);
* the first bytes are sniffed for text playlists and manifests;
* ffmpeg/PyAV are opened with ``protocol_whitelist=file`` and a whitelist of plain container demuxers
  (so even an unsniffed playlist is refused by the demuxer layer), and the path is passed as
  ``file:/abs/path`` so nothing in the name is read as a protocol or pattern.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from gpu_worker.media.errors import (
    EmptyFileError,
    MediaTooLargeError,
    NotAFileError,
    UnsafeMediaError,
)

# Demuxers a user file may be opened with (ffmpeg short names). Everything else (hls, concat, dash,
# image2, sdp, rtp, lavfi, tee, ...) is refused by ffmpeg itself through ``format_whitelist``.
ALLOWED_DEMUXERS: tuple[str, ...] = (
    "mov", "mp4", "m4a", "3gp", "3g2", "mj2",  # ISO BMFF family (one demuxer)
    "matroska", "webm",
    "avi", "flv", "mpegts", "mpeg", "asf",
    "wav", "w64", "mp3", "flac", "ogg", "aac", "aiff", "caf",
)  # fmt: skip
FORMAT_WHITELIST = ",".join(ALLOWED_DEMUXERS)

# Input options for every user-supplied file, for the ffmpeg CLI and for av.open alike.
SAFE_INPUT_OPTIONS: dict[str, str] = {
    "protocol_whitelist": "file",
    "format_whitelist": FORMAT_WHITELIST,
}

# Start of text files that make a demuxer open other files or URLs.
_PLAYLIST_MARKERS: tuple[bytes, ...] = (
    b"#extm3u",  # HLS / m3u playlists
    b"#ext-x-",
    b"ffconcat",  # ffmpeg concat script
    b"[playlist]",  # .pls
    b"<?xml",  # DASH .mpd, SMIL, IMF and other XML manifests
    b"<mpd",
    b"<smil",
)
_URL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:")
_SNIFF_BYTES = 4096


def ffmpeg_url(path: Path) -> str:
    """The string to hand ffmpeg for a checked path: ``file:`` plus the absolute path (no protocol guessing)."""
    return "file:" + str(path)


def check_input_path(path: str | os.PathLike[str], *, max_bytes: int | None = None) -> Path:
    """Return the absolute path of a safe, non-empty regular local file, or raise a typed MediaError."""
    raw = os.fspath(path)
    if isinstance(raw, bytes):  # pragma: no cover - defensive, fspath of str paths is str
        raw = raw.decode()
    if not raw:
        raise NotAFileError("No input file given.")
    if ("://" in raw or _URL_RE.match(raw)) and not os.path.lexists(raw):
        raise UnsafeMediaError(f"{raw!r} looks like a URL; only local files are accepted.")
    p = Path(raw).expanduser().absolute()
    try:
        st = os.stat(p)  # follows symlinks: what matters is what ffmpeg would read
    except FileNotFoundError:
        kind = "a broken symlink" if p.is_symlink() else "no such file"
        raise NotAFileError(f"{raw}: {kind}.") from None
    except OSError as exc:
        raise NotAFileError(f"{raw}: cannot be read ({exc.strerror}).") from None
    if stat.S_ISDIR(st.st_mode):
        raise NotAFileError(f"{raw} is a directory, not a media file.")
    if not stat.S_ISREG(st.st_mode):
        raise NotAFileError(f"{raw} is not a regular file (device, FIFO or socket); refusing to read it.")
    if st.st_size == 0:
        raise EmptyFileError(f"{raw} is empty (0 bytes).")
    if max_bytes is not None and st.st_size > max_bytes:
        raise MediaTooLargeError(
            f"{raw} is {st.st_size / 1e6:.1f} MB; the limit is {max_bytes / 1e6:.1f} MB."
        )
    _sniff(p, raw)
    return p.resolve()


def _sniff(p: Path, shown: str) -> None:
    try:
        with open(p, "rb") as fh:
            head = fh.read(_SNIFF_BYTES)
    except OSError as exc:
        raise NotAFileError(f"{shown}: cannot be read ({exc.strerror}).") from None
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if any(text.startswith(m) for m in _PLAYLIST_MARKERS) or b"#ext-x-" in text:
        raise UnsafeMediaError(
            f"{shown} is a playlist or manifest (HLS, ffconcat, DASH...), which can reference other "
            "files; upload the media file itself."
        )


def looks_like_mp4(path: Path) -> bool:
    """True when the file starts like an ISO BMFF (MP4/MOV) file: a size then an ``ftyp`` box. Such a
    file that fails to open has lost its index, i.e. it was cut short."""
    with open(path, "rb") as fh:
        return fh.read(8)[4:8] == b"ftyp"


def check_format_name(format_name: str, shown: str) -> None:
    """Refuse a container whose detected demuxer is not on the whitelist (second line of defence)."""
    names = set(format_name.split(","))
    if not names & set(ALLOWED_DEMUXERS):
        raise UnsafeMediaError(f"{shown}: container format {format_name!r} is not accepted.")
