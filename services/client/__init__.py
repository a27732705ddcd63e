"""The SyncTalk v1 API from Python: ``Client`` (sync) and ``AsyncClient``, typed errors, and the bulk
dubbing runner behind ``synctalk remote dub`` (``services.client.bulk``).

Imports httpx and the standard library only: no torch, mediapipe, numpy or server code.
"""

from services.client.aio import AsyncClient
from services.client.errors import (
    ApiError,
    ClientError,
    ConfigError,
    Conflict,
    ConnectionFailed,
    Invalid,
    NotFound,
    RateLimited,
    ServerError,
    TooLarge,
    Unauthorized,
)
from services.client.retry import RetryPolicy
from services.client.sync import Client

__all__ = [
    "ApiError", "AsyncClient", "Client", "ClientError", "ConfigError", "Conflict", "ConnectionFailed", "Invalid",
    "NotFound", "RateLimited", "RetryPolicy", "ServerError", "TooLarge", "Unauthorized",
]  # fmt: skip
