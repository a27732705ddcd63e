"""W3C trace context across the broker and the outbox.

A stage's task message carries ``traceparent`` (and ``tracestate``) in its headers; the worker
continues the trace from them. Which context a send carries:

- the current span's, when there is one and it works on the same job (the API request that created
  the job; a worker's stage sending the job's next stage, or handing its own stage back);
- else the context stored on the stage row (``stages.trace_context``: the request that created the
  job, or the stage that made it due), so that the scheduler's sends (never sent, or lost by the
  broker) and a subject's worker making its waiting renders due keep each job in its own trace;
- else the current span's, if any; else none.

A message sent from a stored context gets a short PRODUCER span ``send <kind>.<stage>`` in that trace
(when tracing is on in the sending process), so the trace shows the scheduler's send. Tracing never
fails a send: whatever goes wrong here, the message goes without headers.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from shared.telemetry import tracing
from shared.telemetry.logs import log_fields

log = logging.getLogger(__name__)
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
# what a stage row stores (stages.trace_context, 128 characters wide): version 00, 55 characters
_TRACEPARENT = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")


def current_traceparent() -> str | None:
    """The current span's context as a W3C ``traceparent`` (what a stage row stores), None without one."""
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


@contextmanager
def sending(
    job_id: str, stored: str | None, name: str, attributes: dict[str, object]
) -> Iterator[dict[str, str]]:
    """The trace headers of one stage's task message, sent inside the block (see the module docstring).
    A message that continues a stored context gets a PRODUCER span ``name`` of its own in that trace
    (the scheduler's send, a subject's worker sending a waiting render): the trace shows who sent it
    and when, and the worker's stage span is its child. Tracing never fails a send: whatever goes wrong
    here, the message goes without headers."""
    span = None
    try:
        current, parent = _parent(job_id, stored)
        if parent is not None:
            span = tracing.tracer().start_span(
                name, context=parent, kind=SpanKind.PRODUCER, attributes=attributes
            )
            headers = _inject(trace.set_span_in_context(span))
        else:
            headers = _inject() if current else {}
    except Exception as exc:  # noqa: BLE001
        log.debug("trace headers left out: %s", exc)
        headers = {}
    try:
        yield headers
    except Exception as exc:
        if span is not None:
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
        raise
    finally:
        if span is not None:
            span.end()


def _parent(job_id: str, stored: str | None) -> tuple[bool, otel_context.Context | None]:
    """(continue the current context, else the stored one to continue: None when there is none)."""
    current = trace.get_current_span().get_span_context().is_valid
    if current and (log_fields().get("job_id") in (None, job_id) or not stored):
        return True, None
    if stored and _TRACEPARENT.fullmatch(stored):
        return False, propagate.extract({TRACEPARENT: stored}, context=otel_context.Context())
    return False, None


def _inject(context: otel_context.Context | None = None) -> dict[str, str]:
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=context)
    return {k: v for k, v in carrier.items() if k in (TRACEPARENT, TRACESTATE)}


def extract(carrier: Mapping[str, object]) -> otel_context.Context:
    """The context a message's or a request's headers carry (an empty one when they carry none, or an
    invalid one)."""
    found = {k: v for k in (TRACEPARENT, TRACESTATE) if isinstance(v := carrier.get(k), str) and v}
    if not found:
        return otel_context.Context()
    try:
        return propagate.extract(found, context=otel_context.Context())
    except Exception as exc:  # noqa: BLE001 -- a malformed header starts a new trace
        log.debug("trace headers ignored: %s", exc)
        return otel_context.Context()
