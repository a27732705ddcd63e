"""Job-state schema: migrations match the models on SQLite and Postgres; tenant scoping; key hashing."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from databases import throwaway_postgres
from sqlalchemy import inspect, text
from sqlalchemy.exc import IntegrityError

from shared.db.api_keys import generate_key, hash_key, verify_key
from shared.db.models import ApiKey, Base, IdempotencyKey, Render, Stage, Subject, Tenant, utcnow
from shared.db.session import make_engine, session_scope, tenant_scoped
from shared.db.states import JobState, can_transition
from shared.settings import Settings

REPO = Path(__file__).resolve().parents[1]
TABLES = {
    "tenants", "api_keys", "uploads", "subjects", "batches", "renders", "stages", "events", "webhooks",
    "webhook_deliveries", "idempotency_keys",
}  # fmt: skip


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
    with throwaway_postgres() as url:
        yield url


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
    later = utcnow()
    with session_scope(engine) as s:
        a, b = Tenant(name="a"), Tenant(name="b")
        s.add_all([a, b])
        s.flush()
        s.add_all(
            [
                Subject(tenant_id=a.id, name="x", profile="tiny"),
                Subject(tenant_id=b.id, name="y", profile="tiny"),
            ]
        )
        s.add_all(
            [
                IdempotencyKey(tenant_id=a.id, key="k1", request_hash="h", expires_at=later),
                IdempotencyKey(tenant_id=b.id, key="k1", request_hash="h", expires_at=later),
            ]
        )  # same key, other tenant: allowed
    a_id = a.id
    with session_scope(engine) as s:
        subjects = s.scalars(tenant_scoped(Subject, a_id)).all()
        assert [x.name for x in subjects] == ["x"] and subjects[0].status == JobState.queued
    with pytest.raises(IntegrityError), session_scope(engine) as s:
        s.add(IdempotencyKey(tenant_id=a_id, key="k1", request_hash="other", expires_at=later))
    engine.dispose()


def test_deleting_a_subject_deletes_its_renders_and_stages(database_url: str) -> None:
    command.upgrade(alembic_config(database_url), "head")
    engine = make_engine(Settings(database_url=database_url))
    with session_scope(engine) as s:
        t = Tenant(name="t")
        s.add(t)
        s.flush()
        subject = Subject(tenant_id=t.id, name="x", profile="tiny")
        s.add(subject)
        s.flush()
        render = Render(tenant_id=t.id, subject_id=subject.id)
        s.add(render)
        s.flush()
        s.add_all(
            [
                Stage(
                    tenant_id=t.id,
                    job_id=subject.id,
                    subject_id=subject.id,
                    position=0,
                    name="ingest",
                    queue="cpu",
                ),
                Stage(
                    tenant_id=t.id,
                    job_id=render.id,
                    render_id=render.id,
                    position=0,
                    name="render",
                    queue="gpu",
                ),
            ]
        )
    with pytest.raises(IntegrityError), session_scope(engine) as s:  # one stage of a name per job
        s.add(
            Stage(
                tenant_id=t.id,
                job_id=subject.id,
                subject_id=subject.id,
                position=1,
                name="ingest",
                queue="cpu",
            )
        )
    with session_scope(engine) as s:
        s.delete(s.get(Subject, subject.id))
    with session_scope(engine) as s:
        assert s.scalars(tenant_scoped(Render, t.id)).all() == []
        assert s.scalars(tenant_scoped(Stage, t.id)).all() == []
    engine.dispose()


def test_upgrade_keeps_rows_of_the_first_schema(database_url: str) -> None:
    """A database at 0001 with a tenant, a key and a subject upgrades; the subject gets its job columns."""
    cfg = alembic_config(database_url)
    command.upgrade(cfg, "0001")
    engine = make_engine(Settings(database_url=database_url))
    with engine.begin() as conn:
        conn.execute(
            text("INSERT INTO tenants (id, name, created_at) VALUES ('t1', 'old', CURRENT_TIMESTAMP)")
        )
        conn.execute(
            text(
                "INSERT INTO subjects (id, tenant_id, name, state, created_at, updated_at) "
                "VALUES ('s1', 't1', 'someone', 'succeeded', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
            )
        )
    command.upgrade(cfg, "head")
    with session_scope(engine) as s:
        subject = s.get(Subject, "s1")
        assert subject.name == "someone" and subject.status == "queued" and subject.profile == "preview"
    command.downgrade(cfg, "base")
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
