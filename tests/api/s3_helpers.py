"""S3 for the API tests: moto's real server on loopback, a TCP relay in front of it that counts the bytes
each way (what the API really read from storage), and storage folders nothing can be deleted from. A
module of its own, imported as ``from s3_helpers import ...``."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest

AWS_TEST_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(port: int, alive, what: str) -> None:
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            if not alive() or time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not start on port {port}") from None
            time.sleep(0.05)


class MotoServer:
    """moto's S3 server on a free loopback port (``url``), until ``stop()``."""

    def __init__(self, log: Path) -> None:
        port = free_port()
        server = Path(sys.executable).with_name("moto_server")
        if not server.exists():
            server = Path(shutil.which("moto_server") or "moto_server")
        self._log = open(log, "wb")  # noqa: SIM115 -- closed in stop()
        self.proc = subprocess.Popen(
            [str(server), "-H", "127.0.0.1", "-p", str(port)], stdout=self._log, stderr=subprocess.STDOUT,
            env={**os.environ, **AWS_TEST_ENV},
        )  # fmt: skip
        self.url = f"http://127.0.0.1:{port}"
        _wait_for(port, lambda: self.proc.poll() is None, "moto_server")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


def use_test_credentials(monkeypatch, tmp_path: Path) -> None:
    """boto3 sees the test credentials and nothing of the developer's own AWS configuration or proxies."""
    for name, value in AWS_TEST_ENV.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


class ByteProxy:
    """A TCP relay on a loopback port (``url``) to ``upstream`` (``http://HOST:PORT``): every connection
    is passed through as it is, and the bytes each way are counted (``to_client``: what the upstream
    answered and the client was given; ``to_upstream``: what the client sent)."""

    def __init__(self, upstream: str) -> None:
        host, _, port = upstream.removeprefix("http://").rstrip("/").partition(":")
        self.upstream = (host, int(port))
        self.to_client = 0
        self.to_upstream = 0
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._server.getsockname()[1]}"
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def reset(self) -> None:
        with self._lock:
            self.to_client = self.to_upstream = 0

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.upstream, timeout=10)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, "to_upstream"), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, "to_client"), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, counter: str) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
                with self._lock:
                    setattr(self, counter, getattr(self, counter) + len(data))
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._closed = True
        self._server.close()
        with self._lock:
            for s in self._sockets:
                with suppress(OSError):
                    s.close()


@contextmanager
def undeletable(folder: Path) -> Iterator[None]:
    """Nothing under ``folder`` can be deleted while the block runs: its folders are made read-only, or
    immutable (``chattr +i``) when the tests run as root, whom permissions do not stop."""
    folders = [folder, *(p for p in folder.rglob("*") if p.is_dir())]
    if os.geteuid() != 0:
        modes = {p: p.stat().st_mode for p in folders}
        for p in folders:
            p.chmod(0o555)
        try:
            yield
        finally:
            for p, mode in modes.items():
                p.chmod(mode)
        return
    chattr = shutil.which("chattr")
    if chattr is None or subprocess.run([chattr, "+i", *map(str, folders)], capture_output=True).returncode:
        if chattr is not None:
            subprocess.run([chattr, "-i", *map(str, folders)], capture_output=True)
        pytest.skip("running as root on a filesystem without immutable folders (chattr +i)")
    try:
        yield
    finally:
        subprocess.run([chattr, "-i", *map(str, folders)], check=True)
