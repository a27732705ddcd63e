"""The API's side of a trace, in-process: a request's SERVER span named by its route template, with the
tenant and its database and storage calls as children; the task it queues carries the request's trace
in its message headers (read raw from Redis), and a stage the scheduler sends later from the outbox
carries the trace stored on its row. Incoming ``traceparent`` headers are continued, event streams end
their span when the stream starts."""

from __future__ import annotations

import base64
import io
import json
import socket
import time
import wave
from datetime import timedelta
from pathlib import Path

import pytest
import redis
from api_helpers import EventStream, make_api, new_subject, run_job, served
from databases import redis_server
from opentelemetry.trace import SpanKind
from sqlalchemy import select

from shared.db.models import Stage, utcnow
from shared.jobs import dispatch
from shared.queue.app import make_celery
from shared.settings import Settings


def _wav(seconds: float = 1.0) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(b"\x00\x01" * int(16000 * seconds))
    return out.getvalue()


def _take_message(url: str, queue: str, job_id: str) -> dict:
    """The raw message of ``job_id``'s task from the broker's list (removed from it)."""
    client = redis.Redis.from_url(url)
    try:
        for raw in client.lrange(queue, 0, -1):
            message = json.loads(raw)
            args = json.loads(base64.b64decode(message["body"]))[0]
            if args[1] == job_id:
                client.lrem(queue, 1, raw)
                return message
    finally:
        client.close()
    raise AssertionError(f"no task of {job_id} in {queue}")


def _server_span(finished, name: str):
    found = [s for s in finished if s.kind == SpanKind.SERVER and s.name == name]
    assert len(found) == 1, [s.name for s in finished]
    return found[0]


def _descends_from(span, ancestor, by_id: dict) -> bool:
    while span.parent is not None:
        if span.parent.span_id == ancestor.context.span_id:
            return True
        span = by_id.get(span.parent.span_id)
        if span is None:
            return False
    return False


def _ready_subject(api) -> str:
    subject_id = new_subject(api.platform, api.tenant_id, "Ann")
    run_job(api.platform, "subject", subject_id)
    return subject_id


@pytest.fixture
def api(tmp_path: Path):
    made = make_api(tmp_path, broker_url=redis_server())
    yield made
    made.close()


def test_a_render_request_is_one_trace_from_its_span_to_its_task_message(api, spans):
    subject_id = _ready_subject(api)
    spans.clear()
    r = api.client().post(
        f"/v1/subjects/{subject_id}/renders", files={"audio": ("line.wav", _wav(), "audio/wav")}
    )
    assert r.status_code == 202, r.text
    render_id = r.json()["id"]

    finished = spans.get_finished_spans()
    server = _server_span(finished, "POST /v1/subjects/{subject_id}/renders")
    trace_id = f"{server.context.trace_id:032x}"
    assert server.attributes["http.route"] == "/v1/subjects/{subject_id}/renders"
    assert server.attributes["http.request.method"] == "POST"
    assert server.attributes["http.response.status_code"] == 202
    assert server.attributes["synctalk.tenant_id"] == api.tenant_id
    assert r.headers["x-trace-id"] == trace_id

    by_id = {s.context.span_id: s for s in finished}
    in_request = [s for s in finished if _descends_from(s, server, by_id)]
    queries = [s for s in in_request if s.attributes.get("db.system") == "sqlite"]
    assert {"SELECT", "INSERT"} <= {q.attributes["db.operation"] for q in queries}, [q.name for q in queries]
    assert any(s.name.startswith("storage put_") for s in in_request), [s.name for s in in_request]
    send = next(s for s in in_request if s.name == "send stages")
    assert send.kind == SpanKind.PRODUCER and send.attributes["messaging.batch.message_count"] == 1

    message = _take_message(redis_server(), "gpu", render_id)  # the render stage's queue
    version, sent_trace, parent, flags = message["headers"]["traceparent"].split("-")
    assert (version, sent_trace, parent) == ("00", trace_id, f"{send.context.span_id:016x}")
    assert int(flags, 16) & 1  # sampled: the worker records its stage too

    with api.platform.sessions() as s:
        stored = s.scalar(select(Stage.trace_context).where(Stage.job_id == render_id))
    assert stored == f"00-{trace_id}-{server.context.span_id:016x}-{flags}"


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_stage_the_scheduler_sends_later_joins_the_trace_of_the_request_that_made_it(tmp_path, spans):
    url = redis_server()
    api = make_api(tmp_path, broker_url=f"redis://127.0.0.1:{_dead_port()}/0")  # the broker is down
    try:
        subject_id = _ready_subject(api)
        r = api.client().post(
            f"/v1/subjects/{subject_id}/renders", files={"audio": ("a.wav", _wav(), "audio/wav")}
        )
        assert r.status_code == 202, r.text
        render_id = r.json()["id"]
        server = _server_span(spans.get_finished_spans(), "POST /v1/subjects/{subject_id}/renders")
        # later, in the scheduler (no span is current), the broker back: the outbox sends it
        report = dispatch.dispatch(
            make_celery(Settings(broker_url=url)), api.platform.sessions, resend_after_s=30,
            now=utcnow() + timedelta(seconds=10), depths={},
        )  # fmt: skip
        assert report.sent == 1 and not report.failed
        message = _take_message(url, "gpu", render_id)
        _, sent_trace, parent, _ = message["headers"]["traceparent"].split("-")
        send = next(x for x in spans.get_finished_spans() if x.name == "send render.render" and x.parent)
        assert (
            send.kind == SpanKind.PRODUCER and send.parent.span_id == server.context.span_id
        )  # the scheduler's
        assert (sent_trace, parent) == (f"{server.context.trace_id:032x}", f"{send.context.span_id:016x}")
    finally:
        api.close()


def test_an_incoming_traceparent_is_continued_and_routes_name_the_spans(api, spans):
    incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    client = api.client()
    r = client.get("/v1/subjects", headers={"traceparent": incoming})
    assert r.status_code == 200 and r.headers["x-trace-id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    server = _server_span(spans.get_finished_spans(), "GET /v1/subjects")
    assert f"{server.context.trace_id:032x}" == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert f"{server.parent.span_id:016x}" == "00f067aa0ba902b7" and server.parent.is_remote

    spans.clear()
    assert client.get("/v1/renders/no-such-render").status_code == 404  # a route: its template
    assert client.get("/v1/no/such/path").status_code == 404  # no route: the method alone
    assert client.get("/dashboard/api/v1/subjects").status_code == 401  # under a mount: its prefix too
    assert "x-trace-id" not in client.get("/healthz").headers  # probes are not traced
    names = [s.name for s in spans.get_finished_spans() if s.kind == SpanKind.SERVER]
    assert names == ["GET /v1/renders/{render_id}", "GET", "GET /dashboard/api/v1/subjects"]


def test_an_event_streams_span_ends_when_the_stream_starts(api, spans):
    with served(api.app) as url:
        stream = EventStream(url, api.key)  # returns once the stream's headers arrived
        try:
            deadline = time.monotonic() + 10
            while not [s for s in spans.get_finished_spans() if s.name == "GET /v1/events"]:
                assert time.monotonic() < deadline, "the stream's span did not end"
                time.sleep(0.05)
            server = _server_span(spans.get_finished_spans(), "GET /v1/events")
            assert stream.status == 200 and server.attributes["synctalk.stream"] is True
            assert server.attributes["http.response.status_code"] == 200
        finally:
            stream.close()


def test_without_tracing_a_request_carries_no_trace(api):
    r = api.client().get("/v1/subjects")
    assert r.status_code == 200 and "x-trace-id" not in r.headers


def test_a_render_made_due_by_its_subjects_worker_keeps_the_trace_of_its_own_request(api, spans):
    """A render submitted while its subject trains is sent by the subject's worker when training ends:
    its task carries the render's request's trace (stored on its stage), not the subject's stage's."""
    from shared.jobs import lifecycle
    from shared.queue.stages import stages_of
    from shared.telemetry import log_context, tracer

    subject_id = new_subject(api.platform, api.tenant_id, "Ann")  # queued: still to train
    r = api.client().post(
        f"/v1/subjects/{subject_id}/renders", files={"audio": ("a.wav", _wav(), "audio/wav")}
    )
    assert r.status_code == 202 and r.json()["status"] == "queued", r.text
    render_id = r.json()["id"]
    request = _server_span(spans.get_finished_spans(), "POST /v1/subjects/{subject_id}/renders")

    nxt = []
    with log_context(kind="subject", job_id=subject_id), tracer().start_as_current_span("stage") as stage:
        for spec in stages_of("subject"):  # the subject's worker, stage after stage
            with api.platform.sessions() as s:
                row = lifecycle.claim(
                    s, "subject", subject_id, spec.name, task_id="t", worker="w", stale_after_s=60
                )
                nxt = lifecycle.finish_stage(s, "subject", subject_id, row)
                s.commit()
        assert [(n.job_id, n.stage) for n in nxt] == [(render_id, "render")]
        assert dispatch.send(api.platform.celery, api.platform.sessions, nxt)
    message = _take_message(redis_server(), "gpu", render_id)
    _, sent_trace, parent, _ = message["headers"]["traceparent"].split("-")
    assert sent_trace == f"{request.context.trace_id:032x}" != f"{stage.get_span_context().trace_id:032x}"
    send = next(x for x in spans.get_finished_spans() if x.name == "send render.render")
    assert send.parent.span_id == request.context.span_id and parent == f"{send.context.span_id:016x}"
