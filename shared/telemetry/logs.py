"""JSON logs that say whose work a line is about: one object per line with the tenant, job, stage and
kind of the context and the trace and span ids of the current span.

The ids come from context variables, not from each call site: the API binds the tenant once the
request is authenticated (``bind_tenant``), a worker binds the job, stage and kind around each stage
(``log_context``); asyncio tasks and the thread pools FastAPI uses copy them, so every line logged on
a request's or a stage's behalf carries them. ``configure_logging(settings)`` installs the formatter
where a process configured its logging (``log_format = "json"``; ``text`` leaves logging as it was).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from types import MappingProxyType
from typing import TYPE_CHECKING

from opentelemetry import trace

if TYPE_CHECKING:
    from shared.settings import Settings

CONTEXT_KEYS = ("tenant_id", "job_id", "stage", "kind")
_EMPTY: Mapping[str, str] = MappingProxyType({})
_fields: ContextVar[Mapping[str, str]] = ContextVar("synctalk_log_fields", default=_EMPTY)
# loggers that keep handlers of their own (propagate=False): their formatters are replaced too
OWN_HANDLERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "celery", "celery.task", "celery.redirected")


def log_fields() -> Mapping[str, str]:
    """The ids bound in this context (read-only)."""
    return _fields.get()


def bind(**fields: str | None) -> None:
    """Add ids to the current context for the rest of it (an API request's task; its thread-pool
    calls copy it). None values are left out."""
    _fields.set(
        MappingProxyType({**_fields.get(), **{k: str(v) for k, v in fields.items() if v is not None}})
    )


@contextmanager
def log_context(**fields: str | None) -> Iterator[None]:
    """Ids for the block only (a worker's stage); also a fresh scope for ``bind`` calls inside it."""
    token = _fields.set(_fields.get())
    try:
        bind(**fields)
        yield
    finally:
        _fields.reset(token)


def bind_tenant(tenant_id: str) -> None:
    """The request or stage now acts for this tenant: its log lines and its current span say so."""
    bind(tenant_id=tenant_id)
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attribute("synctalk.tenant_id", tenant_id)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts`` (UTC, ISO 8601), ``level``, ``logger``, ``message``, ``exc`` (the
    traceback, when any), the bound ids (``tenant_id``, ``job_id``, ``stage``, ``kind``) and
    ``trace_id`` / ``span_id`` of the current span. Newlines and quotes are escaped by JSON itself, so
    a multi-line message or traceback stays one line."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": _message(record),
        }
        fields = _fields.get()
        for key in CONTEXT_KEYS:
            if key in fields:
                doc[key] = fields[key]
        ctx = trace.get_current_span().get_span_context()
        if ctx.is_valid:
            doc["trace_id"] = format(ctx.trace_id, "032x")
            doc["span_id"] = format(ctx.span_id, "016x")
        if record.name == "uvicorn.access":
            doc.update(_access_fields(record))
        if record.exc_info:
            # cached like logging.Formatter does, for other handlers of the same record
            record.exc_text = record.exc_text or self.formatException(record.exc_info)
        if record.exc_text:
            doc["exc"] = record.exc_text
        if record.stack_info:
            doc["stack"] = self.formatStack(record.stack_info)
        return json.dumps(doc, ensure_ascii=False, default=str)


def _message(record: logging.LogRecord) -> str:
    try:
        return record.getMessage()
    except Exception:  # noqa: BLE001 -- a bad format string must not lose the line
        return f"{record.msg!s} {record.args!r}"


def _access_fields(record: logging.LogRecord) -> dict[str, object]:
    """uvicorn's access lines as fields too: (client, method, path, HTTP version, status)."""
    args = record.args
    if not isinstance(args, tuple) or len(args) != 5:
        return {}
    client, method, path, _version, status = args
    return {"client": client, "method": method, "path": path, "status": status}


def configure_logging(settings: Settings, *, level: int = logging.INFO) -> None:
    """With ``log_format = "json"``: every handler of the root logger and of the loggers that keep
    their own (uvicorn's, Celery's) writes JSON; a root logger without handlers gets one on stderr at
    ``level``. With ``text``: nothing changes. Safe to call more than once."""
    if settings.log_format != "json":
        return
    formatter = JsonFormatter()
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.StreamHandler())
        root.setLevel(level)
    for logger in (root, *(logging.getLogger(name) for name in OWN_HANDLERS)):
        for handler in logger.handlers:
            handler.setFormatter(formatter)
