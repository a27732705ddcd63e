"""Database calls as spans, from SQLAlchemy's cursor events: one CLIENT span per statement, a child of
the current span, only while that span records (a request or a stage being traced): elsewhere, and
with tracing off, a statement costs one context-variable read.

The span says ``db.system`` (postgresql, sqlite), ``db.operation`` (SELECT, INSERT, ...) and
``db.statement``: the SQL as sent, cut to 200 characters, never with its parameter values (SQLAlchemy
binds them separately; they are not read here).
"""

from __future__ import annotations

import re

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from sqlalchemy import Engine, event

from shared.telemetry import tracing

STATEMENT_MAX = 200
TABLE_SEARCH_MAX = 4000  # a SELECT names its columns first: its FROM may come late
_SPAN = "_synctalk_span"  # where the statement's span waits on SQLAlchemy's execution context
_OPERATION = re.compile(r"\s*(?:/\*.*?\*/\s*)?(\w+)", re.S)
# the table a simple statement works on, for the span's name ("SELECT stages")
_TABLE = re.compile(r"\b(?:FROM|INTO|UPDATE)\s+\"?(\w+)", re.I)


def instrument_engine(engine: Engine) -> None:
    """Make spans of ``engine``'s statements (see the module docstring). Once per engine."""
    for name, listener in _LISTENERS.items():
        if not event.contains(engine, name, listener):
            event.listen(engine, name, listener)


def uninstrument_engine(engine: Engine) -> None:
    """Remove the listeners (benchmarks compare with and without them)."""
    for name, listener in _LISTENERS.items():
        if event.contains(engine, name, listener):
            event.remove(engine, name, listener)


def _before(conn, _cursor, statement: str, _parameters, context, _executemany) -> None:
    if context is None or not tracing.recording():
        return
    operation = _operation(statement)
    table = _TABLE.search(statement, 0, TABLE_SEARCH_MAX)
    span = tracing.tracer().start_span(
        f"{operation} {table.group(1)}" if table else operation,
        kind=SpanKind.CLIENT,
        attributes={
            "db.system": conn.dialect.name,
            "db.operation": operation,
            "db.statement": statement[:STATEMENT_MAX],
        },
    )
    setattr(context, _SPAN, span)


def _after(_conn, _cursor, _statement, _parameters, context, _executemany) -> None:
    span = _pop(context)
    if span is not None:
        span.end()


def _error(exception_context) -> None:
    span = _pop(exception_context.execution_context)
    if span is not None:
        exc = exception_context.original_exception
        span.record_exception(exc)
        span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
        span.end()


_LISTENERS = {"before_cursor_execute": _before, "after_cursor_execute": _after, "handle_error": _error}


def _operation(statement: str) -> str:
    found = _OPERATION.match(statement)
    return found.group(1).upper() if found else "SQL"


def _pop(context) -> trace.Span | None:
    if context is None:
        return None
    span = getattr(context, _SPAN, None)
    if span is not None:
        setattr(context, _SPAN, None)
    return span
