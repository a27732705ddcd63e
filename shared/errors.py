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


class DatasetError(SyncTalkError):
    """A dataset folder (the contract in docs/DATASET.md) is missing files, breaks the contract, or is
    not one preprocessing wrote and may replace.

    One class for both sides of the contract: preprocessing (the writer) raises it when it refuses to
    replace a folder, the model and AVE (the readers) when a folder cannot be read. It lives here so
    that neither side imports the other's modules to raise it.
    """

    code = "dataset_invalid"
