"""Typed errors for every way an input file can be refused or a media step can fail.

The ``code`` of each class is stable: the API returns it in problem JSON and tests assert on it.
Messages are written for the person who uploaded the file.
"""

from __future__ import annotations

from shared.errors import SyncTalkError


class MediaError(SyncTalkError):
    """Base of every media failure."""

    code = "media_error"


class NotAFileError(MediaError):
    """The path does not exist, is a directory, a device, a FIFO, or a URL."""

    code = "not_a_file"


class EmptyFileError(MediaError):
    """The file has zero bytes."""

    code = "empty_file"


class NotMediaError(MediaError):
    """No demuxer recognises the file (text, random bytes, an unsupported container)."""

    code = "not_media"


class TruncatedMediaError(MediaError):
    """The container is recognisable but its data ends early (an interrupted upload or copy)."""

    code = "truncated"


class NoVideoStreamError(MediaError):
    """A video is needed but the file has no video stream (or only a cover picture)."""

    code = "no_video_stream"


class NoAudioStreamError(MediaError):
    """Audio is needed but the file has no audio stream."""

    code = "no_audio_stream"


class MediaTooLargeError(MediaError):
    """Bytes, duration, dimensions or frame count exceed the limits in settings (or are nonsensical)."""

    code = "media_too_large"


class UnsafeMediaError(MediaError):
    """A playlist, concat list, URL or other input that would make ffmpeg open further files."""

    code = "unsafe_media"


class MediaTimeoutError(MediaError):
    """An ffmpeg/ffprobe run exceeded ``settings.ffmpeg_timeout_s``."""

    code = "media_timeout"


class MediaDecodeError(MediaError):
    """ffmpeg failed while decoding or encoding (corrupt data mid-stream, encoder failure)."""

    code = "media_decode"
