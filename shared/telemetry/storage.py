"""Storage requests as spans: every operation of the storage interface (``put_file``, ``get_file``,
``open_read``, ``presign_get``, ``delete``, ``upload_dir``, ...) of every backend runs in a CLIENT span
``storage <operation>`` while the current span records (shared/storage/base.py applies this to each
class). Attributes: the operation, the backend (s3, local) and the key's folder (``key_prefix``: the
key without its last segment, or the prefix of a folder operation); never a signed URL, a credential
or a file's content.

One span per operation as the caller sees it: calls a storage makes inside another storage operation
(``RetryingStorage`` asking its backend, ``get_file`` opening a reader, ``upload_dir`` storing each
file of a dataset) get none of their own. A folder is one span with its file and byte counts, not
thousands; the retries of ``RetryingStorage`` show as events on its span (shared/storage/retrying.py).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from shared.telemetry import tracing

OPERATIONS = frozenset(
    {
        "put_file", "put_stream", "put_bytes", "receive",
        "get_file", "open_read", "read_bytes", "get_range", "read_head", "exists", "size",
        "delete", "delete_prefix", "list", "presign_get", "presign_put", "check", "upload_dir", "sync_dir",
    }
)  # fmt: skip
KEY_PREFIX_MAX = 200
_BACKENDS = {"S3Storage": "s3", "LocalStorage": "local"}
_inside: ContextVar[bool] = ContextVar("synctalk_storage_inside", default=False)
_TRACED = "__synctalk_traced__"


def trace_operations(cls: type) -> None:
    """Wrap the storage operations ``cls`` itself defines (not abstract ones) in spans."""
    for name in OPERATIONS:
        fn = cls.__dict__.get(name)
        if (
            callable(fn)
            and not getattr(fn, "__isabstractmethod__", False)
            and not getattr(fn, _TRACED, False)
        ):
            setattr(cls, name, _traced(name, fn))


def _traced(operation: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(self, *args: Any, **kwargs: Any) -> Any:
        if _inside.get() or not tracing.recording():
            return fn(self, *args, **kwargs)
        attributes = _attributes(self, operation, args, kwargs)
        if operation in ("open_read", "list"):
            return _deferred(operation, attributes, fn, self, args, kwargs)
        with tracing.tracer().start_as_current_span(
            f"storage {operation}", kind=SpanKind.CLIENT, attributes=attributes,
            record_exception=False, set_status_on_exception=False,
        ) as span:  # fmt: skip
            token = _inside.set(True)
            try:
                result = fn(self, *args, **kwargs)
            except Exception as exc:
                _failed(span, exc)
                raise
            finally:
                _inside.reset(token)
            _annotate(span, operation, result)
            return result

    setattr(wrapper, _TRACED, True)
    return wrapper


def _deferred(operation: str, attributes: dict, fn, self, args, kwargs) -> Any:
    """``open_read`` returns a context manager and ``list`` an iterator: their work happens when they
    are used, maybe on another thread (a download streamed by the API). Their span does not become the
    current span (a context attached on one thread cannot be detached on another): a reader's runs from
    ``__enter__`` to ``__exit__``, a listing's from the call to its last key."""
    parent = otel_context.get_current()
    span = None
    if operation == "list":
        span = tracing.tracer().start_span(
            f"storage {operation}", context=parent, kind=SpanKind.CLIENT, attributes=attributes
        )
    token = _inside.set(True)
    try:
        result = fn(self, *args, **kwargs)  # a backend asked inside (RetryingStorage's) makes no span
    except Exception as exc:
        if span is not None:
            _failed(span, exc)
            span.end()
        raise
    finally:
        _inside.reset(token)
    if span is None:
        return _TracedReader(result, operation, attributes, parent)
    return _traced_iter(iter(result), span)


class _TracedReader:
    """``open_read``'s context manager, in a span from ``__enter__`` to ``__exit__``."""

    def __init__(self, inner, operation: str, attributes: dict, parent: otel_context.Context) -> None:
        self._inner, self._operation, self._attributes, self._parent = inner, operation, attributes, parent
        self._span: trace.Span | None = None

    def __enter__(self):
        self._span = tracing.tracer().start_span(
            f"storage {self._operation}",
            context=self._parent,
            kind=SpanKind.CLIENT,
            attributes=self._attributes,
        )
        try:
            return self._inner.__enter__()
        except Exception as exc:
            _failed(self._span, exc)
            self._span.end()
            raise

    def __exit__(self, exc_type, exc, tb):
        try:
            return self._inner.__exit__(exc_type, exc, tb)
        finally:
            if self._span is not None:
                if isinstance(exc, Exception):
                    _failed(self._span, exc)
                self._span.end()


def _traced_iter(it: Iterator, span: trace.Span) -> Iterator:
    count = 0
    try:
        for item in it:
            count += 1
            yield item
    except Exception as exc:
        _failed(span, exc)
        raise
    finally:
        span.set_attribute("synctalk.storage.keys", count)
        span.end()


def _attributes(storage: object, operation: str, args: tuple, kwargs: dict) -> dict[str, str]:
    attributes = {"synctalk.storage.operation": operation, "synctalk.storage.backend": _backend(storage)}
    where = _where(operation, args, kwargs)
    if where:
        attributes["synctalk.storage.key_prefix"] = where[:KEY_PREFIX_MAX]
    return attributes


def _where(operation: str, args: tuple, kwargs: dict) -> str:
    """The key's folder, or the folder a folder operation works on."""
    if operation == "upload_dir":  # (local folder, prefix)
        target = args[1] if len(args) > 1 else kwargs.get("prefix", "")
        return str(target).rstrip("/")
    target = args[0] if args else kwargs.get("key", kwargs.get("prefix", ""))
    if not isinstance(target, str):
        return ""
    if operation in ("sync_dir", "delete_prefix", "list"):
        return target.rstrip("/")
    return target.rpartition("/")[0]


def _backend(storage: object) -> str:
    while hasattr(storage, "inner"):  # a wrapper (RetryingStorage): what it wraps
        storage = storage.inner
    name = type(storage).__name__
    return _BACKENDS.get(name, name.lower())


def _annotate(span: trace.Span, operation: str, result: object) -> None:
    if hasattr(result, "transferred"):  # a folder's TransferReport
        span.set_attribute("synctalk.storage.files", result.transferred)
        span.set_attribute("synctalk.storage.skipped", result.skipped)
        span.set_attribute("synctalk.storage.bytes", result.bytes)
    elif operation in ("put_stream", "receive", "size") and isinstance(result, int):
        span.set_attribute("synctalk.storage.bytes", result)
    elif operation == "exists" and isinstance(result, bool):
        span.set_attribute("synctalk.storage.found", result)
    elif operation == "delete_prefix" and isinstance(result, int):
        span.set_attribute("synctalk.storage.files", result)


def _failed(span: trace.Span, exc: Exception) -> None:
    span.record_exception(exc)
    span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
    if getattr(exc, "transient", False):
        span.set_attribute("synctalk.storage.transient", True)
