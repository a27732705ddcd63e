"""Job-state schema: migrations match the models on SQLite and Postgres; tenant scoping; key hashing."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.exc import IntegrityError

from shared.db.api_keys import generate_key, hash_key, verify_key
from shared.db.models import ApiKey, Base, Job, Tenant
from shared.db.session import make_engine, session_scope, tenant_scoped
from shared.db.states import JobState, can_transition
from shared.settings import Settings

REPO = Path(__file__).resolve().parents[1]
TABLES = {"tenants", "api_keys", "subjects", "jobs"}


def alembic_config(url: str) -> Config:
    cfg = Config(str(REPO / "alembic.ini"))
    cfg.set_main_option("sqlalchemy.url", url)
    return cfg


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request, tmp_path: Path):
    """A fresh, empty database: a SQLite file, or a throw-away database on the local Postgres server."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'jobs.db'}"
        return
    server = os.environ.get("SYNCTALK_TEST_POSTGRES_URL")
    if not server:
        if os.environ.get("CI") == "true":
            pytest.fail("CI must provide SYNCTALK_TEST_POSTGRES_URL (.ci/run sets it)")
        pytest.skip("SYNCTALK_TEST_POSTGRES_URL not set")
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


def test_migrations_match_the_models_and_downgrade_cleanly(database_url: str) -> None:
    cfg = alembic_config(database_url)
    command.upgrade(cfg, "head")
    engine = make_engine(Settings(database_url=database_url))
    with engine.connect() as conn:
        assert set(inspect(conn).get_table_names()) >= TABLES
        diffs = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        assert diffs == [], f"models and migrations disagree: {diffs}"
    command.downgrade(cfg, "base")
    with engine.connect() as conn:
        assert not TABLES & set(inspect(conn).get_table_names())
    engine.dispose()


def test_queries_are_tenant_scoped_and_idempotency_keys_unique(database_url: str) -> None:
    command.upgrade(alembic_config(database_url), "head")
    engine = make_engine(Settings(database_url=database_url))
    with session_scope(engine) as s:
        a, b = Tenant(name="a"), Tenant(name="b")
        s.add_all([a, b])
        s.flush()
        s.add_all(
            [
                Job(tenant_id=a.id, idempotency_key="k1"),
                Job(tenant_id=a.id),
                Job(tenant_id=b.id, idempotency_key="k1"),
            ]
        )  # same key, other tenant: allowed
    a_id = a.id
    with session_scope(engine) as s:
        jobs = s.scalars(tenant_scoped(Job, a_id)).all()
        assert len(jobs) == 2 and {j.tenant_id for j in jobs} == {a_id}
        assert all(j.state == JobState.queued for j in jobs)
    with pytest.raises(IntegrityError), session_scope(engine) as s:
        s.add(Job(tenant_id=a_id, idempotency_key="k1"))
    engine.dispose()


def test_api_keys_are_stored_hashed_and_verified() -> None:
    key, prefix = generate_key()
    stored = hash_key(key, "server-secret")
    assert key.startswith(prefix) and key not in stored and len(stored) == 64
    assert verify_key(key, stored, "server-secret")
    assert not verify_key(key + "x", stored, "server-secret")
    assert not verify_key(key, stored, "another-secret")
    assert ApiKey.__table__.c.key_hash is not None and "key" not in ApiKey.__table__.c


def test_finished_jobs_cannot_be_resurrected() -> None:
    assert can_transition(JobState.queued, JobState.running)
    assert can_transition(JobState.running, JobState.queued)  # a reaper requeues a lost worker's job
    for final in (JobState.succeeded, JobState.failed, JobState.canceled):
        assert final.is_final
        assert not any(can_transition(final, other) for other in JobState)
