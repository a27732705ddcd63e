"""S3 for the API tests: moto's real server on loopback (tests/moto_server.py; tests/tcp_proxy.py counts
the bytes each way in front of it: what the API really read from storage), test credentials, and storage
folders nothing can be deleted from. A module of its own, imported as ``from s3_helpers import ...``."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from moto_server import MotoS3, use_test_credentials  # noqa: F401 -- re-exported

AWS_TEST_ENV = MotoS3.ENV


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
