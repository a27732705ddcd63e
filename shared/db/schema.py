"""The database's schema, brought up to date where that is safe to do implicitly.

On the embedded default (a SQLite file) every process that opens the database makes its schema current
itself (``ensure_schema``): a first ``synctalk keys create`` on a fresh data folder just works, with no
``synctalk migrate`` or ``serve`` before it. A file lock beside the database serializes the migration
when the API, the workers and the scheduler start together; once the file is at head, the check is one
query, and once per process.

A server database (PostgreSQL) is never migrated implicitly: several versions of the code may share it
during a deployment, and its migration is an explicit step (``synctalk migrate``, the compose file's
``migrate`` service). There ``ensure_schema`` only says clearly when that step is missing.
"""

from __future__ import annotations

import fcntl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

from shared.errors import SyncTalkError
from shared.settings import Settings

REPO = Path(__file__).resolve().parents[2]
_current: set[str] = set()  # database URLs this process found at head
_guard = threading.Lock()
_HEADS: set[str] | None = None


class SchemaNotReadyError(SyncTalkError):
    """A server database whose schema is missing or older than this code's."""

    code = "schema_not_ready"


def ensure_schema(settings: Settings, *, verify: bool = True) -> None:
    """Make sure the settings' database has this code's schema: a SQLite file is created or upgraded
    (under a file lock); a server database is checked (``verify``) and SchemaNotReadyError raised when it
    is behind, naming ``synctalk migrate``. A no-op once this process found the database current."""
    url = settings.resolved_database_url
    if url in _current:
        return
    path = sqlite_path(url)
    if path is None:
        if verify:
            _require_current(url)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    if not _is_current(url):
        with _migration_lock(path):
            if not _is_current(url):  # another process may have done it while this one waited
                _alembic_upgrade(url)
    _current.add(url)


def upgrade(url: str) -> None:
    """``alembic upgrade head`` on ``url``, explicitly (``synctalk migrate``); a SQLite file's under the
    same lock as ``ensure_schema``."""
    path = sqlite_path(url)
    if path is None:
        _alembic_upgrade(url)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with _migration_lock(path):
        _alembic_upgrade(url)


def _alembic_upgrade(url: str) -> None:
    from alembic import command

    command.upgrade(alembic_config(url), "head")


@contextmanager
def _migration_lock(path: Path) -> Iterator[None]:
    """One migration at a time on the file: across processes (the lock file beside it) and across the
    threads of this one (flock is held per open file, so two threads would each get their own)."""
    with _guard, file_lock(path.with_name(path.name + ".migrate.lock")):
        yield


def alembic_config(url: str):
    from alembic.config import Config

    cfg = Config(str(REPO / "alembic.ini"))
    cfg.set_main_option("script_location", str(REPO / "migrations"))
    cfg.set_main_option("sqlalchemy.url", url)
    return cfg


def sqlite_path(url: str) -> Path | None:
    """The file of a ``sqlite:///`` URL; None for a server database (or SQLite in memory)."""
    if not url.startswith("sqlite:///"):
        return None
    name = url.removeprefix("sqlite:///").split("?", 1)[0]
    return Path(name) if name and name != ":memory:" else None


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` (created when missing, never removed: removing a lock file
    lets a waiter and a newcomer hold two different files), held until the block ends."""
    with open(path, "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _heads() -> set[str]:
    """This code's head revisions (read from migrations/ once per process)."""
    from alembic.script import ScriptDirectory

    global _HEADS
    if _HEADS is None:
        _HEADS = set(ScriptDirectory.from_config(alembic_config("sqlite://")).get_heads())
    return _HEADS


def _revisions(url: str) -> set[str]:
    """The revisions the database is at (empty: no schema yet)."""
    from alembic.migration import MigrationContext

    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return set(MigrationContext.configure(conn).get_current_heads())
    finally:
        engine.dispose()


def _is_current(url: str) -> bool:
    return _revisions(url) == _heads()


def _require_current(url: str) -> None:
    at = _revisions(url)
    if at == _heads():
        _current.add(url)
        return
    from alembic.script import ScriptDirectory

    known = {r.revision for r in ScriptDirectory.from_config(alembic_config(url)).walk_revisions()}
    if at and not at <= known:  # a newer code's migration ran already: this code's tables are there
        return
    state = f"at {', '.join(sorted(at))}" if at else "empty"
    raise SchemaNotReadyError(
        f"The database schema is {state}, not {', '.join(sorted(_heads()))} as this version needs: "
        "run `synctalk migrate` (alembic upgrade head) first."
    )
