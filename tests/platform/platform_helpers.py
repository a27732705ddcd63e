"""The platform started for real: ``synctalk serve`` (or its parts) as processes on a free port, a
tenant key made with ``synctalk keys create``, and an HTTP client. A module of its own, not conftest.py."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))  # the suite's shared helpers, for scripts (bench/) that import this
from moto_server import MotoS3  # noqa: E402,F401 -- the platform tests' storage, re-exported


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def synctalk(env: dict, *args: str, timeout: float = 120) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "services.cli.main", *args], env=env, cwd=REPO, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(f"synctalk {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}")
    return out.stdout


def platform_env(data_dir: Path, port: int, **settings: str) -> dict:
    """The environment of every process of one platform: the embedded default under ``data_dir``
    unless ``settings`` name other services; tiny training and short clips accepted."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("SYNCTALK_") or k == "SYNCTALK_MODEL_SOURCES"
    }
    env.update(
        SYNCTALK_ENVIRONMENT="test",
        SYNCTALK_DATA_DIR=str(data_dir),
        SYNCTALK_PUBLIC_URL=f"http://127.0.0.1:{port}",
        SYNCTALK_DEFAULT_PROFILE="tiny",
        SYNCTALK_MIN_TRAIN_SECONDS="4",
        SYNCTALK_MODEL_DOWNLOAD="false",
        SYNCTALK_JOB_HEARTBEAT_S="2",
        PYTHONUNBUFFERED="1",
    )
    env.update({f"SYNCTALK_{k.upper()}": v for k, v in settings.items()})
    return env


class Served:
    """``synctalk serve`` in the background; ``stop()`` ends it (and says what it printed on failure)."""

    def __init__(self, env: dict, port: int, log: Path) -> None:
        self.port, self.log = port, log
        self._fh = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "services.cli.main", "serve", "--port", str(port)],
            env=env, cwd=REPO, stdout=self._fh, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.url = f"http://127.0.0.1:{port}"
        self._wait_ready()

    def _wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve exited:\n{self.output()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"serve did not answer in {timeout:.0f} s:\n{self.output()}")

    def output(self) -> str:
        self._fh.flush()
        return self.log.read_text(errors="replace")[-6000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._fh.close()


def wait_for(
    client: httpx.Client, path: str, statuses=("succeeded", "failed", "canceled"), timeout: float = 600
):
    """Poll a job until it finishes; returns its last document."""
    deadline = time.monotonic() + timeout
    doc = {}
    while time.monotonic() < deadline:
        doc = client.get(path).json()
        if doc.get("status") in statuses:
            return doc
        time.sleep(1)
    raise TimeoutError(f"{path} still {doc.get('status')} at {doc.get('stage')} after {timeout:.0f} s: {doc}")


def postgres_database(server_url: str):
    """A throw-away database on the test Postgres server: (url, drop)."""
    import uuid

    from sqlalchemy import create_engine, text

    name = f"synctalk_e2e_{uuid.uuid4().hex[:10]}"
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return server_url.rsplit("/", 1)[0] + f"/{name}", drop


def presigned_upload(client: httpx.Client, path: Path, content_type: str) -> str:
    """POST /v1/uploads, PUT the file to the URL it gives (with its headers); returns the upload id."""
    r = client.post(
        "/v1/uploads",
        json={"filename": path.name, "content_type": content_type, "bytes": path.stat().st_size},
    )
    assert r.status_code == 201, r.text
    up = r.json()
    with open(path, "rb") as fh:
        put = httpx.put(up["url"], content=fh.read(), headers=up["headers"], timeout=60)
    assert put.status_code in (200, 201, 204), put.text
    return up["id"]
