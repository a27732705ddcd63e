"""Typed failures of preprocessing: each is bad input or an unusable clip, told to the uploader in one line.

A dataset folder that preprocessing refuses to replace is ``shared.errors.DatasetError`` (``dataset_invalid``),
the one class the dataset's readers raise too.
"""

from __future__ import annotations

from shared.errors import SyncTalkError


class PreprocessError(SyncTalkError):
    """Base of every expected preprocessing failure."""

    code = "preprocess"


class NoFaceError(PreprocessError):
    """No face was found anywhere in the video."""

    code = "no_face"


class TooManyUnusableFramesError(PreprocessError):
    """Too large a share of the frames has no usable face."""

    code = "unusable_frames"


class ClipTooShortError(PreprocessError):
    """The clip (or its usable part) is too short to train on."""

    code = "clip_too_short"


class AudioEncoderError(PreprocessError):
    """The requested audio encoder cannot run (unknown name, missing weights or package)."""

    code = "audio_encoder"
