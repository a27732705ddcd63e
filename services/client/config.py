"""Where the API is and which key to use: arguments first, then ``SYNCTALK_API_URL`` / ``SYNCTALK_API_KEY``."""

from __future__ import annotations

import os
import uuid

from services.client.errors import ConfigError

DEFAULT_URL = "http://127.0.0.1:8000"
USER_AGENT = "synctalk-client/1"


def resolve(url: str | None, api_key: str | None) -> tuple[str, str]:
    url = (url or os.environ.get("SYNCTALK_API_URL") or DEFAULT_URL).rstrip("/")
    key = api_key or os.environ.get("SYNCTALK_API_KEY")
    if not key:
        raise ConfigError(
            "No API key: set SYNCTALK_API_KEY (make one with `synctalk keys create --tenant NAME`) "
            "or pass api_key=."
        )
    return url, key


def new_key() -> str:
    """A fresh Idempotency-Key for one logical POST (the same one is sent on each of its retries)."""
    return uuid.uuid4().hex


# Content types the API accepts (video/*, audio/*, application/octet-stream), by extension.
_TYPES = {
    ".wav": "audio/wav", ".mp3": "audio/mpeg", ".m4a": "audio/mp4", ".aac": "audio/aac", ".flac": "audio/flac",
    ".ogg": "audio/ogg", ".oga": "audio/ogg", ".opus": "audio/ogg", ".aif": "audio/aiff", ".aiff": "audio/aiff",
    ".mp4": "video/mp4", ".mov": "video/quicktime", ".mkv": "video/x-matroska", ".webm": "video/webm",
    ".avi": "video/x-msvideo", ".m4v": "video/mp4",
}  # fmt: skip


def content_type_of(name: str) -> str:
    return _TYPES.get(os.path.splitext(name)[1].lower(), "application/octet-stream")
