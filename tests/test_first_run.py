"""First run on the embedded default: a command that opens the database makes its schema itself, so
``synctalk keys create`` works on a fresh data folder (no ``synctalk migrate`` or ``serve`` before it),
also when several start at once; a database already at head is left alone, quickly; a PostgreSQL
database is never migrated implicitly, and a command on one without the schema says to run
``synctalk migrate``."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from databases import throwaway_postgres
from sqlalchemy import create_engine, inspect, select

from shared.db import schema
from shared.db.models import ApiKey, Tenant
from shared.db.session import make_engine, session_scope
from shared.settings import Settings

REPO = Path(__file__).resolve().parents[1]


def synctalk(*args: str, data_dir: Path, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SYNCTALK_")}
    return subprocess.run(
        [sys.executable, "-m", "services.cli.main", *args], cwd=REPO, capture_output=True, text=True,
        timeout=120, env={**clean, "SYNCTALK_DATA_DIR": str(data_dir), **env},
    )  # fmt: skip


def test_keys_create_on_a_fresh_data_folder_makes_the_database(tmp_path):
    data = tmp_path / "data"
    done = synctalk("keys", "create", "--tenant", "studio", data_dir=data)
    assert done.returncode == 0, done.stderr
    key = done.stdout.strip().splitlines()[-1]
    assert key.startswith("stk_")
    engine = make_engine(Settings(data_dir=data))
    with session_scope(engine) as s:
        assert s.scalars(select(Tenant.name)).all() == ["studio"]
        assert key.startswith(s.scalar(select(ApiKey.prefix)))
    engine.dispose()
    revoke = synctalk("keys", "revoke", key[:12], data_dir=data)  # the next command finds it ready
    assert revoke.returncode == 0, revoke.stderr


def test_commands_started_together_on_a_fresh_data_folder_all_succeed(tmp_path):
    data = tmp_path / "data"
    with ThreadPoolExecutor(3) as pool:
        runs = list(
            pool.map(lambda _: synctalk("keys", "create", "--tenant", "studio", data_dir=data), range(3))
        )
    for run in runs:
        assert run.returncode == 0, run.stderr
    keys = {run.stdout.strip().splitlines()[-1] for run in runs}
    assert len(keys) == 3 and all(k.startswith("stk_") for k in keys)
    engine = make_engine(Settings(data_dir=data))
    with session_scope(engine) as s:
        assert s.scalars(select(Tenant.name)).all() == ["studio"]  # one tenant, three keys
        assert len(s.scalars(select(ApiKey.id)).all()) == 3
    engine.dispose()


def test_a_database_at_head_is_left_alone_without_waiting_for_the_lock(tmp_path):
    """A file made by ``alembic upgrade head`` (as the test fixtures make theirs) is current: the check
    neither migrates nor waits for a migration lock another process holds."""
    from alembic import command

    db = tmp_path / "data" / "synctalk.db"
    db.parent.mkdir(parents=True)
    command.upgrade(schema.alembic_config(f"sqlite:///{db}"), "head")
    changed = db.stat().st_mtime_ns
    held, release = threading.Event(), threading.Event()

    def hold_lock() -> None:
        with schema.file_lock(db.with_name(db.name + ".migrate.lock")):
            held.set()
            release.wait(30)

    holder = threading.Thread(target=hold_lock)
    holder.start()
    try:
        assert held.wait(10)
        t0 = time.monotonic()
        schema.ensure_schema(Settings(data_dir=db.parent))
        assert time.monotonic() - t0 < 5
    finally:
        release.set()
        holder.join(10)
    assert db.stat().st_mtime_ns == changed


@pytest.fixture
def empty_postgres():
    with throwaway_postgres() as url:
        yield url


def test_postgres_is_never_migrated_implicitly(empty_postgres, tmp_path):
    done = synctalk(
        "keys", "create", "--tenant", "studio", data_dir=tmp_path, SYNCTALK_DATABASE_URL=empty_postgres
    )
    assert done.returncode != 0
    assert "synctalk migrate" in done.stderr and "Traceback" not in done.stderr, done.stderr
    with pytest.raises(schema.SchemaNotReadyError, match="synctalk migrate"):
        schema.ensure_schema(Settings(database_url=empty_postgres))
    engine = create_engine(empty_postgres)
    assert inspect(engine).get_table_names() == []  # nothing was created
    engine.dispose()

    migrated = synctalk("migrate", data_dir=tmp_path, SYNCTALK_DATABASE_URL=empty_postgres)
    assert migrated.returncode == 0, migrated.stderr
    done = synctalk(
        "keys", "create", "--tenant", "studio", data_dir=tmp_path, SYNCTALK_DATABASE_URL=empty_postgres
    )
    assert done.returncode == 0, done.stderr
