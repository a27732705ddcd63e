"""Typed errors every stage raises for bad input or a failed step.

Each carries a stable ``code`` (what the API returns in problem JSON, what tests assert on) and a
message written for the user who uploaded the file, not for the developer.
"""

from __future__ import annotations


class SyncTalkError(Exception):
    """Base of every expected failure: the CLI prints it without a traceback, the API maps it to 4xx."""

    code: str = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ModelFileError(SyncTalkError):
    """A model file could not be found, fetched or verified."""

    code = "model_file"
