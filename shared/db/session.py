"""Engines and sessions from settings, and the tenant scoping every query goes through."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, Select, create_engine, event, select
from sqlalchemy.orm import Session, sessionmaker

from shared.settings import Settings
from shared.telemetry.db import instrument_engine

# 40 connections, as many as the API's thread pool has threads and more than the requests that may hold
# a session at once (``api_db_sessions``, 30): with 15 (the default) a burst of requests deadlocked the
# pool. Idle ones are closed back to 10.
POOL = {"pool_size": 10, "max_overflow": 30, "pool_timeout": 30}


def make_engine(settings: Settings) -> Engine:
    url = settings.resolved_database_url
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False}, **POOL)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(
            dbapi_conn, _record
        ) -> None:  # enforce FKs; WAL lets the API read while workers write
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA journal_mode=WAL")
            cur.close()
    else:
        engine = create_engine(url, pool_pre_ping=True, **POOL)
    instrument_engine(engine)  # statements as spans, only inside a traced request or stage
    return engine


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A session that commits on success and rolls back on any error."""
    session = sessionmaker(engine, expire_on_commit=False)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def tenant_scoped(model, tenant_id: str) -> Select:
    """``select(model)`` restricted to one tenant: the only way resource routes query tenant rows."""
    return select(model).where(model.tenant_id == tenant_id)
