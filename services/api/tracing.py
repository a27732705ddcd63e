"""One SERVER span per API request (docs/OBSERVABILITY.md), as a plain ASGI middleware.

- Name ``METHOD /route/template`` (``POST /v1/subjects``, ``GET /v1/renders/{render_id}``): the
  route's template, never the raw path (ids would make every name unique); just ``METHOD`` when no
  route matched (a 404, a 429 before routing). Attributes: ``http.request.method``, ``http.route``,
  ``url.path``, ``http.response.status_code`` and, once the request is authenticated,
  ``synctalk.tenant_id`` (services/api/deps.py). Never the query string (signed URLs carry their
  signatures there) nor headers.
- An incoming W3C ``traceparent`` is continued (a client's, a proxy's or a gateway's trace), as the
  standard asks; without one the request starts a trace, sampled at ``trace_sample_ratio``. Every
  traced response carries ``X-Trace-Id``, the id to look for in the tracing backend and in the JSON
  logs.
- Event streams (``text/event-stream``) last for hours: their span ends when the stream's response
  starts (``synctalk.stream = true``), covering authentication and the resume lookup; an open span
  would sit in the exporter's memory for hours and reach the backend, if ever, as one bar across the
  whole view. The ended span stops recording, so the stream's own work makes no child spans; its log
  lines still carry its trace id.
- Liveness, readiness and metrics scrapes (``/healthz``, ``/readyz``, ``/metrics``) are not traced:
  every few seconds per process, they would be most of the traces and say nothing.

With tracing off the middleware only gives each request a fresh logging context (its tenant, bound
after authentication, never leaks into another request's lines).
"""

from __future__ import annotations

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from starlette.routing import Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared import telemetry

UNTRACED_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
TRACE_ID_HEADER = b"x-trace-id"


class TraceRequests:
    """``app.add_middleware(TraceRequests)``: added last, it wraps every other middleware (rate limits
    included) so the span covers the whole request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        with telemetry.log_context():  # this request's ids only
            if not telemetry.enabled() or scope["path"] in UNTRACED_PATHS:
                await self.app(scope, receive, send)
                return
            await self._traced(scope, receive, send)

    async def _traced(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = scope["method"]
        parent = telemetry.extract(_headers(scope))
        span = telemetry.tracer().start_span(
            method,
            context=parent,
            kind=SpanKind.SERVER,
            attributes={"http.request.method": method, "url.path": scope["path"]},
        )
        root_path = scope.get("root_path", "")
        trace_id = format(span.get_span_context().trace_id, "032x").encode()
        valid = span.get_span_context().is_valid
        state = {"status": 500, "ended": False}  # what an exception escaping the app becomes

        async def traced_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                headers = list(message.get("headers", ()))
                if valid:
                    message = {**message, "headers": [*headers, (TRACE_ID_HEADER, trace_id)]}
                if _is_event_stream(headers):
                    span.set_attribute("synctalk.stream", True)
                    _finish(span, scope, root_path, state["status"])
                    state["ended"] = True
            await send(message)

        token = otel_context.attach(trace.set_span_in_context(span, parent))
        try:
            await self.app(scope, receive, traced_send)
        except Exception as exc:
            if not state["ended"]:  # an event stream's span ended when the stream started
                span.record_exception(exc)
            raise
        finally:
            otel_context.detach(token)
            if not state["ended"]:
                _finish(span, scope, root_path, state["status"])


def _finish(span: trace.Span, scope: Scope, root_path: str, status: int) -> None:
    method = scope["method"]
    route = route_template(scope, root_path)
    span.update_name(f"{method} {route}" if route else method)
    if route:
        span.set_attribute("http.route", route)
    span.set_attribute("http.response.status_code", status)
    if status >= 500:
        span.set_status(Status(StatusCode.ERROR, str(status)))
    span.end()


def route_template(scope: Scope, root_path: str = "") -> str | None:
    """The matched route's template, with the prefix of the mount it is under (the dashboard's
    ``/dashboard/api``); None when no route matched. ``root_path``: the scope's before routing."""
    route = scope.get("route")
    path = getattr(route, "path_format", None) or getattr(route, "path", None)
    if not path:
        return None
    mounted = scope.get("root_path", "")[len(root_path) :]  # the mounts routing went through (static)
    if isinstance(route, Mount):  # a mounted app without routes of its own (static files)
        return f"{mounted}/{{path}}"
    return mounted + path


def _headers(scope: Scope) -> dict[str, str]:
    found: dict[str, str] = {}
    for name, value in scope.get("headers", ()):
        if name in (b"traceparent", b"tracestate"):
            found[name.decode()] = value.decode("latin-1")
    return found


def _is_event_stream(headers: list[tuple[bytes, bytes]]) -> bool:
    return any(k.lower() == b"content-type" and v.startswith(b"text/event-stream") for k, v in headers)
