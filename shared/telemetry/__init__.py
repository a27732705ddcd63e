"""Traces and logs (docs/OBSERVABILITY.md).

- ``setup(settings, service_name)``: this process's tracing, once (OTLP/HTTP by setting; off: a no-op);
  ``capture_spans()`` for tests.
- ``configure_logging(settings)``: JSON lines with the tenant, job, stage, kind, trace and span ids.
- The rest is used where the work happens: the API's request spans (services/api/tracing.py), W3C
  trace context in the task messages (``propagation``), a stage's span in the worker, database spans
  from engine events (``db``) and storage spans around every storage operation (``storage``).
"""

from shared.telemetry.logs import JsonFormatter, bind, bind_tenant, configure_logging, log_context, log_fields
from shared.telemetry.propagation import current_traceparent, extract, sending
from shared.telemetry.tracing import capture_spans, enabled, flush, recording, setup, tracer, untraced

__all__ = [
    "JsonFormatter",
    "bind",
    "bind_tenant",
    "capture_spans",
    "configure_logging",
    "current_traceparent",
    "enabled",
    "extract",
    "flush",
    "log_context",
    "log_fields",
    "recording",
    "sending",
    "setup",
    "tracer",
    "untraced",
]
