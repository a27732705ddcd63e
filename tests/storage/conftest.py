"""Storage fixtures: moto's S3 server on loopback (one per session) and a `storage` fixture that runs
each test against both backends."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from moto_server import use_test_credentials
from storage_helpers import AWS_TEST_ENV, PUBLIC_URL, SECRET, free_port, new_bucket

from shared.storage import LocalStorage, Storage


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory) -> Iterator[str]:
    """``http://127.0.0.1:PORT`` of a moto S3 server started for this session, killed at its end."""
    port = free_port()
    log = (tmp_path_factory.mktemp("moto") / "moto.log").open("wb")
    env = {**os.environ, **AWS_TEST_ENV}
    server = Path(sys.executable).with_name("moto_server")  # the test venv's own, wherever it lives
    if not server.exists():
        server = Path(shutil.which("moto_server") or "moto_server")
    proc = subprocess.Popen(
        [str(server), "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT, env=env
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"moto_server did not start on port {port} (see {log.name})")
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture
def aws_env(monkeypatch, tmp_path: Path) -> None:
    """Test credentials for boto3, and nothing from the developer's own AWS configuration or proxies."""
    use_test_credentials(monkeypatch, tmp_path)


@pytest.fixture
def s3_storage(moto_endpoint: str, aws_env: None):
    """An S3Storage on a bucket that does not exist yet (the backend creates it)."""
    from shared.storage.s3 import S3Storage

    return S3Storage(new_bucket(), "", moto_endpoint, "us-east-1")


@pytest.fixture
def local_storage(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "storage", SECRET, PUBLIC_URL)


@pytest.fixture(params=["local", "s3"])
def storage(request) -> Storage:
    """The same test against both backends."""
    return request.getfixturevalue(f"{request.param}_storage")
