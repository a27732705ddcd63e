"""Bulk dubbing: a manifest of speech tracks onto one subject, resumable (``synctalk remote dub``)."""

from services.client.bulk.manifest import ManifestError, Row, read_manifest
from services.client.bulk.runner import DubOptions, Summary, dub

__all__ = ["DubOptions", "ManifestError", "Row", "Summary", "dub", "read_manifest"]
