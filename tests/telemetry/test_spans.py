"""The pieces of tracing on their own: which trace context a task message carries, storage and
database spans (made only inside a recording span), and where spans are exported."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.trace import SpanKind
from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.db.models import Tenant
from shared.db.schema import ensure_schema
from shared.db.session import make_engine
from shared.settings import Settings
from shared.storage import LocalStorage, NotFoundError, S3Storage, Storage
from shared.storage.retrying import RetryingStorage
from shared.telemetry import current_traceparent, log_context, sending, tracer, untraced
from shared.telemetry.tracing import traces_endpoint

STORED = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def _sent(job_id: str, stored: str | None) -> str | None:
    """The traceparent a stage's message of ``job_id`` carries, ``stored`` on its row."""
    with sending(job_id, stored, "send subject.ingest", {}) as headers:
        return headers.get("traceparent")


def test_a_message_carries_the_current_span_of_its_job_else_the_stored_context(spans):
    # the scheduler (no span is current): the stored trace, through a send span of its own
    sent = _sent("j1", STORED)
    send = spans.get_finished_spans()[-1]
    assert send.name == "send subject.ingest" and send.kind == SpanKind.PRODUCER
    assert f"{send.parent.span_id:016x}" == STORED.split("-")[2] and send.parent.is_remote
    assert sent == f"00-{STORED.split('-')[1]}-{send.context.span_id:016x}-01"
    spans.clear()
    assert (
        _sent("j1", None) is None and _sent("j1", "not a traceparent") is None
    )  # a damaged row never breaks a send
    assert spans.get_finished_spans() == ()
    with tracer().start_as_current_span("request"):
        current = current_traceparent()
        assert _sent("j1", STORED) == current  # the API: the request's trace
        with log_context(job_id="subject-1"):  # a subject's stage...
            assert _sent("subject-1", STORED) == current  # ...sends its next stage
            assert _sent("render-1", STORED).split("-")[1] == STORED.split("-")[1]  # ...a waiting render
            assert _sent("render-2", None) == current  # one with no trace of its own
    assert current.startswith("00-") and int(current[-2:], 16) & 1 and len(current) == 55  # sampled


def test_with_tracing_off_a_message_still_carries_the_stored_context():
    assert _sent("j1", STORED) == STORED  # the scheduler without an endpoint: nothing lost on the way


@pytest.fixture(params=["local", "s3"])
def backend(request, tmp_path: Path, monkeypatch) -> Iterator[Storage]:
    """Each backend, wrapped as workers wrap it (``RetryingStorage``); S3 is moto's server."""
    if request.param == "local":
        yield LocalStorage(tmp_path / "store", "secret", "http://api")
        return
    from moto_server import MotoS3

    moto = MotoS3(tmp_path / "moto.log")
    for name, value in MotoS3.ENV.items():
        monkeypatch.setenv(name, value)
    try:
        yield S3Storage("traces", "", moto.url)
    finally:
        moto.stop()


def test_storage_operations_are_spans_inside_a_traced_span_only(spans, backend: Storage, tmp_path: Path):
    storage = RetryingStorage(backend, budget_s=1)
    source = tmp_path / "source.bin"
    source.write_bytes(b"x" * 1000)
    storage.put_file("tenants/t1/subjects/s1/source.mp4", source)  # no span is current: nothing
    assert spans.get_finished_spans() == ()
    folder = tmp_path / "dataset"
    (folder / "frames").mkdir(parents=True)
    for i in range(5):
        (folder / "frames" / f"{i}.png").write_bytes(b"p" * 10)
    with tracer().start_as_current_span("stage") as stage:
        storage.put_file("tenants/t1/subjects/s1/source.mp4", source)
        with storage.open_read("tenants/t1/subjects/s1/source.mp4") as fh:
            assert len(fh.read()) == 1000
        assert list(storage.list("tenants/t1/subjects")) == ["tenants/t1/subjects/s1/source.mp4"]
        url = storage.presign_get("tenants/t1/subjects/s1/source.mp4", 60).url
        report = storage.upload_dir(folder, "tenants/t1/subjects/s1/dataset")
        synced = storage.sync_dir("tenants/t1/subjects/s1/dataset", tmp_path / "copy")
        storage.get_file("tenants/t1/subjects/s1/source.mp4", tmp_path / "source.copy")
        with untraced():
            storage.exists("tenants/t1/subjects/s1/source.mp4")
        assert storage.delete_prefix("tenants/t1") == 7
    made = [s for s in spans.get_finished_spans() if s.name.startswith("storage ")]
    assert [s.name for s in made] == [
        "storage put_file", "storage open_read", "storage list", "storage presign_get", "storage upload_dir",
        "storage sync_dir", "storage get_file", "storage delete_prefix",
    ]  # one span per operation: not RetryingStorage's backend, not each file of a folder  # fmt: skip
    assert all(s.parent.span_id == stage.get_span_context().span_id for s in made)
    put, *_, upload, sync, _, deleted = made
    assert put.attributes == {
        "synctalk.storage.operation": "put_file",
        "synctalk.storage.backend": "s3" if isinstance(backend, S3Storage) else "local",
        "synctalk.storage.key_prefix": "tenants/t1/subjects/s1",
    }
    assert upload.attributes["synctalk.storage.files"] == report.transferred == 5
    assert sync.attributes["synctalk.storage.files"] == synced.transferred == 5
    assert deleted.attributes["synctalk.storage.files"] == 7
    assert not any(url.split("?")[1] in str(s.attributes) for s in made)  # never a signed URL


def test_a_failed_storage_operation_marks_its_span(spans, tmp_path: Path):
    storage = LocalStorage(tmp_path, "secret", "http://api")
    with tracer().start_as_current_span("stage"), pytest.raises(NotFoundError):
        storage.get_file("tenants/t1/missing.bin", tmp_path / "out")
    failed = next(s for s in spans.get_finished_spans() if s.name == "storage get_file")
    assert failed.status.status_code.name == "ERROR" and failed.events[0].name == "exception"


def test_database_statements_are_spans_without_their_values(spans, tmp_path: Path):
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'db.sqlite'}")
    ensure_schema(settings)
    engine = make_engine(settings)
    try:
        with Session(engine) as s:
            s.execute(select(Tenant).where(Tenant.name == "before-any-span")).all()
            with tracer().start_as_current_span("request") as request:
                s.execute(select(Tenant).where(Tenant.name == "a-secret-name")).all()
                with untraced():
                    s.execute(select(Tenant).where(Tenant.name == "untraced")).all()
    finally:
        engine.dispose()
    queries = [s for s in spans.get_finished_spans() if s.attributes.get("db.system")]
    assert len(queries) == 1, [s.name for s in queries]
    query = queries[0]
    assert query.name == "SELECT tenants" and query.parent.span_id == request.get_span_context().span_id
    assert query.attributes["db.system"] == "sqlite" and query.attributes["db.operation"] == "SELECT"
    assert (
        query.attributes["db.statement"].startswith("SELECT") and len(query.attributes["db.statement"]) <= 200
    )
    assert "a-secret-name" not in query.attributes["db.statement"]


def test_the_export_endpoint_comes_from_our_setting_else_the_standard_variables(monkeypatch):
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_SDK_DISABLED"):
        monkeypatch.delenv(name, raising=False)
    assert traces_endpoint(Settings()) == ""  # tracing off
    assert (
        traces_endpoint(Settings(otlp_endpoint="http://collector:4318/")) == "http://collector:4318/v1/traces"
    )
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://otel:4318")
    assert traces_endpoint(Settings()) == "http://otel:4318/v1/traces"
    assert (
        traces_endpoint(Settings(otlp_endpoint="http://ours:4318/v1/traces")) == "http://ours:4318/v1/traces"
    )
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://otel:4318/custom")
    assert traces_endpoint(Settings()) == "http://otel:4318/custom"
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert traces_endpoint(Settings(otlp_endpoint="http://collector:4318")) == ""


def test_setup_exports_with_our_provider_and_leaves_the_global_one_alone(tmp_path: Path):
    """In a fresh process: ``setup`` with an endpoint turns tracing on, once; OpenTelemetry's global
    provider stays unset, so FastAPI's own telemetry (which follows it) adds no second server span."""
    script = """
from fastapi import FastAPI
from opentelemetry import trace
from shared.settings import Settings
from shared.telemetry import enabled, setup
settings = Settings(otlp_endpoint="http://127.0.0.1:9/")
assert setup(settings, "synctalk-test") and enabled() and setup(settings, "again")
assert type(trace.get_tracer_provider()).__name__ == "ProxyTracerProvider"
assert not FastAPI()._native_telemetry.enabled()
print("ok")
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env)
    assert out.stdout.strip() == "ok", out.stderr
