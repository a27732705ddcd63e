"""Storage that rides out outages (shared/storage/retrying.py), against moto's real S3 server behind a
TCP proxy that cuts the link: a transient outage is waited out request by request, a permanent error
is raised at once, and an outage longer than the budget is raised as transient (the stage is then
handed back). Which S3 answers are transient is checked on the errors botocore really raises."""

from __future__ import annotations

import time
import uuid

import pytest
from moto_server import MotoS3
from tcp_proxy import TcpProxy

from shared.storage import NotFoundError, StorageError
from shared.storage.retrying import RetryingStorage, backoff_delays
from shared.storage.s3 import S3Storage
from shared.transient import is_transient


@pytest.fixture(scope="module")
def moto(tmp_path_factory):
    server = MotoS3(tmp_path_factory.mktemp("moto") / "moto.log")
    yield server
    server.stop()


@pytest.fixture
def linked(moto, aws_env):
    """(an S3Storage reaching moto through a proxy, the proxy)."""
    proxy = TcpProxy("127.0.0.1", int(moto.url.rsplit(":", 1)[1]), name="s3").start()
    storage = S3Storage(
        f"retry-{uuid.uuid4().hex[:10]}", "", proxy.url, max_attempts=1, connect_timeout=1, read_timeout=5
    )
    storage.put_bytes("warm", b"x")  # the bucket exists before the faults
    yield storage, proxy
    proxy.stop()


def test_an_outage_is_waited_out_and_the_folder_upload_resumes_where_it_was(linked, tmp_path):
    storage, proxy = linked
    folder = tmp_path / "dataset"
    folder.mkdir()
    for i in range(3):
        (folder / f"f{i}.bin").write_bytes(bytes([i]) * 1000)
    retrying = RetryingStorage(storage, budget_s=30)
    proxy.outage(3, wait=False)  # S3 unreachable for 3 s, from now
    started = time.monotonic()
    retrying.upload_dir(folder, "prefix")
    assert time.monotonic() - started >= 2.5  # it waited
    assert sorted(storage.list("prefix")) == [
        "prefix/.complete",
        "prefix/f0.bin",
        "prefix/f1.bin",
        "prefix/f2.bin",
    ]


def test_the_unreachable_error_is_transient_and_raised_after_the_budget(linked):
    storage, proxy = linked
    proxy.cut()
    try:
        with pytest.raises(StorageError) as err:
            storage.put_bytes("k", b"v")  # no retry of ours: botocore's one attempt
        assert err.value.transient and is_transient(err.value)
        started = time.monotonic()
        with pytest.raises(StorageError) as err:
            RetryingStorage(storage, budget_s=2).put_bytes("k", b"v")
        assert err.value.transient and 1.5 < time.monotonic() - started < 10
    finally:
        proxy.restore()


def test_a_permanent_error_is_raised_at_once(linked):
    storage, _ = linked
    started = time.monotonic()
    with pytest.raises(NotFoundError) as err:
        RetryingStorage(storage, budget_s=30).read_bytes("missing")
    assert not err.value.transient and time.monotonic() - started < 2


def test_backoff_grows_with_jitter_and_stays_within_the_budget():
    delays = list(backoff_delays(20.0, first_s=0.5, cap_s=4.0))
    assert abs(sum(delays) - 20.0) < 1e-6
    assert 0.375 <= delays[0] <= 0.625 and max(delays) <= 5.0
    assert delays[3] > delays[0]  # it grows
