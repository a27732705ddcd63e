"""A stage's span in the worker: ``stage <kind>.<stage>`` (CONSUMER), continuing the trace its task
message carries (``traceparent`` in the headers, shared/telemetry/propagation.py), so its parent is the
API request that queued it, the stage before it, or whatever the scheduler's send stored for it.

Attributes: ``synctalk.job_id``, ``synctalk.stage``, ``synctalk.kind``, ``synctalk.tenant_id`` and
``synctalk.attempt`` once the stage is claimed (runner.py), ``messaging.destination`` (the queue),
``synctalk.outcome`` (done, nothing to do, failed: CODE, handed back, ...). A failed stage's span has
an error status and, for an exception, the exception as an event. Its logs carry the same ids.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from shared import telemetry
from shared.queue.stages import stage_spec

FAILED = ("failed", "handed back: unavailable")  # outcomes that are errors of this run


@contextmanager
def stage_span(request: object, kind: str, job_id: str, stage: str) -> Iterator[trace.Span]:
    """The span (current inside the block) and the log ids of one stage's run; ``request``: the Celery
    task's request (its message headers)."""
    queue = stage_spec(kind, stage).queue
    parent = telemetry.extract(_trace_headers(request))
    with (
        telemetry.log_context(kind=kind, job_id=job_id, stage=stage),
        telemetry.tracer().start_as_current_span(
            f"stage {kind}.{stage}",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes={
                "synctalk.job_id": job_id,
                "synctalk.stage": stage,
                "synctalk.kind": kind,
                "messaging.system": "celery",
                "messaging.destination": queue,
                "messaging.destination.name": queue,
                "messaging.message.id": str(getattr(request, "id", "") or ""),
            },
        ) as span,
    ):
        yield span


def record_outcome(span: trace.Span, outcome: str) -> None:
    span.set_attribute("synctalk.outcome", outcome)
    if outcome.startswith(FAILED):
        span.set_status(Status(StatusCode.ERROR, outcome))


def _trace_headers(request: object) -> dict[str, object]:
    """Celery puts a message's own headers on the request (as attributes; some paths in ``headers``)."""
    headers = getattr(request, "headers", None) or {}
    return {
        name: getattr(request, name, None) or (headers.get(name) if isinstance(headers, dict) else None)
        for name in ("traceparent", "tracestate")
    }
