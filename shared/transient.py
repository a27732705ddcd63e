"""Errors by kind: transient ones (a service unreachable, timed out, busy) may go away if the same thing
is tried again later; everything else is permanent and fails at once with its code.

Workers retry transient errors in place with backoff (``retry_transient``), then hand their stage back
to the queue; the API answers them with 503 and ``Retry-After``. Bad media, an invalid dataset or a bug
are never retried: trying again would fail the same way.
"""

from __future__ import annotations

import socket


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` says "not now" (database, broker or storage unreachable, timed out, throttled)."""
    from shared.storage.base import StorageError

    if isinstance(exc, StorageError):
        return exc.transient
    if isinstance(exc, ConnectionError | TimeoutError | socket.timeout | socket.gaierror):
        return True
    return _database_transient(exc) or _broker_transient(exc)


def _database_transient(exc: BaseException) -> bool:
    try:
        from sqlalchemy import exc as sa
    except ImportError:  # pragma: no cover - the services always have SQLAlchemy
        return False
    if isinstance(exc, sa.DBAPIError) and exc.connection_invalidated:
        return True  # the connection dropped mid-statement
    if isinstance(exc, sa.OperationalError) and "no such " in str(exc.orig):
        return False  # SQLite reports a missing table or column as "operational": a schema problem
    # OperationalError: the server went away, refused the connection, or the statement was interrupted
    # (SQLite: "database is locked"); InterfaceError: the connection is closed; TimeoutError: no pooled
    # connection came in time
    return isinstance(exc, sa.OperationalError | sa.InterfaceError | sa.TimeoutError)


def _broker_transient(exc: BaseException) -> bool:
    try:
        from kombu.exceptions import OperationalError as KombuOperationalError
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError
    except ImportError:  # pragma: no cover
        return False
    return isinstance(exc, KombuOperationalError | RedisConnectionError | RedisTimeoutError)


def describe(exc: BaseException) -> str:
    """One line naming the failure, for a stage's message (no traceback, no credentials)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    # SQLAlchemy appends the statement and a link; the first line says what happened
    return f"{type(exc).__name__}: {text}"[:300] if text else type(exc).__name__
