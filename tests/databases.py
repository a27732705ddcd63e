"""Throw-away databases on the test PostgreSQL server (``SYNCTALK_TEST_POSTGRES_URL``, set by .ci/run):
one empty database per use, dropped after it. Without the server a test is skipped, except on CI, where
a missing server fails it."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import create_engine, text


def postgres_server() -> str:
    server = os.environ.get("SYNCTALK_TEST_POSTGRES_URL")
    if not server:
        if os.environ.get("CI") == "true":
            pytest.fail("CI must provide SYNCTALK_TEST_POSTGRES_URL (.ci/run sets it)")
        pytest.skip("SYNCTALK_TEST_POSTGRES_URL not set")
    return server


def redis_server() -> str:
    """The test Redis URL (a database index of its own), skipped where none is set, failing on CI."""
    url = os.environ.get("SYNCTALK_TEST_REDIS_URL")
    if not url:
        if os.environ.get("CI") == "true":
            pytest.fail("CI must provide SYNCTALK_TEST_REDIS_URL (.ci/run sets it)")
        pytest.skip("SYNCTALK_TEST_REDIS_URL not set")
    return url


@contextmanager
def throwaway_postgres() -> Iterator[str]:
    """The URL of a new, empty database; dropped (connections and all) when the block ends."""
    server = postgres_server()
    name = f"synctalk_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield server.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
