"""Fixtures of the job-life tests: a migrated database on SQLite and on PostgreSQL, a broker of our own."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from databases import throwaway_postgres

from shared.db.session import make_engine
from shared.settings import Settings

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["sqlite", "postgres"])
def engine(request, tmp_path):
    """A migrated database: a SQLite file, or a throw-away database on the test PostgreSQL server."""
    with contextlib.ExitStack() as stack:
        if request.param == "sqlite":
            url = f"sqlite:///{tmp_path / 'jobs.db'}"
        else:
            url = stack.enter_context(throwaway_postgres())
        cfg = Config(str(REPO / "alembic.ini"))
        cfg.set_main_option("sqlalchemy.url", url)
        command.upgrade(cfg, "head")
        eng = make_engine(Settings(database_url=url))
        yield eng
        eng.dispose()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A redis-server of the test's own on a free port (nothing kept on disk): ``restart()`` brings it
    back empty, as a broker restarted without persistence."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def restart(self) -> None:
        self.kill()
        self.start()

    def llen(self, queue: str) -> int:
        import redis

        return redis.Redis(port=self.port).llen(queue)


@pytest.fixture
def redis_server():
    if shutil.which("redis-server") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI must have redis-server (.ci/run uses it)")
        pytest.skip("redis-server is not installed")
    server = RedisServer()
    yield server
    server.kill()
