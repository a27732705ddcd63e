"""The process's tracer: set up once from the settings (an OTLP/HTTP exporter), a no-op otherwise.

Everything in the platform asks ``tracer()`` for its tracer and ``recording()`` before it makes a
child span (database and storage calls): with tracing off ``tracer()`` is OpenTelemetry's no-op
tracer and ``recording()`` is one context-variable read, so an unconfigured process pays next to
nothing (docs/OBSERVABILITY.md has the figures).

Forked processes: Celery's pool children call ``setup`` in ``worker_process_init``, after the fork, so
the exporter's thread is started in the process that uses it. The SDK also re-creates the batch
processor's thread in a child forked after ``setup`` (``os.register_at_fork``), so a provider inherited
through a fork keeps working; ``setup`` in such a child keeps it rather than stacking a second one.

The provider is the platform's own, never OpenTelemetry's global one (see ``setup``).

Tests: ``capture_spans()`` sends every span of the process to an in-memory exporter for the length of
a ``with`` block, and puts things back afterwards.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from contextvars import ContextVar
from typing import TYPE_CHECKING

from opentelemetry import trace

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from shared.settings import Settings

log = logging.getLogger(__name__)
SCOPE = "synctalk"  # the instrumentation scope every span of ours carries
TRACES_PATH = "/v1/traces"
EXPORT_TIMEOUT_S = 5.0  # one export may take this long; a collector that is away costs no more

_NOOP = trace.NoOpTracer()
_lock = threading.Lock()
_provider: TracerProvider | None = None  # where spans go; None: tracing is off
_tracer: trace.Tracer = _NOOP
_setup_pid: int | None = None  # the process ``setup`` ran in
# set inside work whose database and storage calls are not worth a span each (a stage's progress
# writes and heartbeats: one a second for hours)
_untraced: ContextVar[bool] = ContextVar("synctalk_untraced", default=False)


def enabled() -> bool:
    """Whether spans go anywhere in this process."""
    return _provider is not None


def tracer() -> trace.Tracer:
    """The platform's tracer (the no-op one while tracing is off)."""
    return _tracer


def recording() -> bool:
    """Whether the current span records, i.e. whether a child span (a query, a storage request) is
    worth making. False with tracing off, in a sampled-out trace, after a span ended (an event stream's
    request, see services/api/tracing.py) and inside ``untraced()``."""
    return not _untraced.get() and trace.get_current_span().is_recording()


@contextmanager
def untraced() -> Iterator[None]:
    """No database or storage spans inside the block (chatty, uninteresting writes)."""
    token = _untraced.set(True)
    try:
        yield
    finally:
        _untraced.reset(token)


def traces_endpoint(settings: Settings) -> str:
    """Where spans are exported: ``otlp_endpoint`` (a base URL), else the standard
    ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` (the full URL) or ``OTEL_EXPORTER_OTLP_ENDPOINT`` (a base
    URL); "" when none is set or ``OTEL_SDK_DISABLED`` is true."""
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return ""
    base = settings.otlp_endpoint.strip()
    if not base:
        full = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
        if full:
            return full
        base = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    if not base:
        return ""
    base = base.rstrip("/")
    return base if base.endswith(TRACES_PATH) else base + TRACES_PATH


def setup(settings: Settings, service_name: str) -> bool:
    """Configure this process's tracing once (later calls are no-ops): an SDK provider named
    ``service_name`` (synctalk-api, synctalk-worker, synctalk-scheduler), sampling
    ``trace_sample_ratio`` of new traces and following the parent's decision otherwise, exporting in
    batches over OTLP/HTTP. Without an endpoint nothing is installed. True when tracing is on."""
    global _setup_pid
    with _lock:
        if _provider is not None or _setup_pid == os.getpid():
            return enabled()  # done here, or inherited through a fork (still working, see the docstring)
        _setup_pid = os.getpid()
        endpoint = traces_endpoint(settings)
        if not endpoint:
            return False
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

        provider = TracerProvider(
            resource=_resource(settings, service_name),
            sampler=ParentBased(TraceIdRatioBased(settings.trace_sample_ratio)),
        )
        # headers (a collector's token) and TLS come from the standard OTEL_EXPORTER_OTLP_* variables
        provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint, timeout=EXPORT_TIMEOUT_S))
        )
        # Not made the global provider on purpose: FastAPI's and Starlette's own OpenTelemetry support
        # switch on when there is one, and would add a second server span to every request.
        _install(provider)
    log.info("tracing: %s exports to %s (sampling %g)", service_name, endpoint, settings.trace_sample_ratio)
    return True


def _resource(settings: Settings, service_name: str):
    from importlib.metadata import PackageNotFoundError, version

    from opentelemetry.sdk.resources import Resource

    attributes = {"deployment.environment.name": settings.environment}
    if not os.environ.get("OTEL_SERVICE_NAME"):  # the standard variable wins when an operator set it
        attributes["service.name"] = service_name
    with suppress(PackageNotFoundError):
        attributes["service.version"] = version("synctalk-platform")
    return Resource.create(attributes)  # merged with OTEL_RESOURCE_ATTRIBUTES


def _install(provider: TracerProvider | None) -> None:
    global _provider, _tracer
    _provider = provider
    _tracer = provider.get_tracer(SCOPE) if provider is not None else _NOOP


def flush(timeout_s: float = 5.0) -> None:
    """Export what is buffered (a pool process about to exit: its atexit hooks may never run)."""
    provider = _provider
    if provider is not None:
        try:
            provider.force_flush(int(timeout_s * 1000))
        except Exception as exc:  # noqa: BLE001 -- tracing never fails the process
            log.debug("tracing: flush failed: %s", exc)


@contextmanager
def capture_spans() -> Iterator[InMemorySpanExporter]:
    """Tests: every span this process makes inside the block is recorded (all sampled) and kept in the
    exporter it yields (``get_finished_spans()``); tracing is as before afterwards."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON

    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "synctalk-test"}), sampler=ALWAYS_ON)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with _lock:
        previous = _provider
        _install(provider)
    try:
        yield exporter
    finally:
        with _lock:
            _install(previous)
        provider.shutdown()
