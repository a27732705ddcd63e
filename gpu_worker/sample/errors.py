"""Typed failures of the sample-subject generator (each prints as one clear line in the CLI)."""

from __future__ import annotations

from shared.errors import SyncTalkError


class SampleError(SyncTalkError):
    """The sample clip could not be made (no face found on the photo, a write failed, ...)."""

    code = "sample"


class SampleOptionError(SampleError):
    """An option is out of range (size, seconds, text)."""

    code = "sample_option"


class SpeechEngineError(SampleError):
    """No offline speech engine is available (neither piper-tts with its voice nor espeak-ng)."""

    code = "tts_unavailable"
