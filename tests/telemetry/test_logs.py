"""JSON log lines: the fields, exceptions, the ids of the context and of the current span, and text
that stays one valid JSON object whatever the message holds."""

from __future__ import annotations

import io
import json
import logging

import pytest

from shared.settings import Settings
from shared.telemetry import JsonFormatter, bind_tenant, configure_logging, log_context, tracer


def _record(message: str, *args, level: int = logging.INFO, name: str = "synctalk.test", exc_info=None):
    return logging.LogRecord(name, level, __file__, 1, message, args, exc_info)


def _line(record: logging.LogRecord) -> dict:
    text = JsonFormatter().format(record)
    assert "\n" not in text  # one line per record, always
    return json.loads(text)


def test_a_line_has_its_time_level_logger_and_message():
    doc = _line(_record("sent %d task(s)", 3, level=logging.WARNING))
    assert (
        doc["level"] == "WARNING" and doc["logger"] == "synctalk.test" and doc["message"] == "sent 3 task(s)"
    )
    assert doc["ts"].endswith("Z") and "T" in doc["ts"]
    assert not {"exc", "tenant_id", "job_id", "trace_id"} & set(doc)  # nothing that is not known


def test_quotes_newlines_and_other_scripts_stay_one_valid_json_object():
    message = 'a "quoted" word,\nanother line\r\n\ttab, a backslash \\ and ünïcödé \u2028 😀 {"json": true}'
    assert _line(_record("%s", message))["message"] == message


def test_an_exception_is_written_with_its_traceback():
    try:
        raise ValueError('bad "value"\nover two lines')
    except ValueError:
        import sys

        doc = _line(_record("the stage crashed", level=logging.ERROR, exc_info=sys.exc_info()))
    assert doc["message"] == "the stage crashed"
    assert doc["exc"].startswith("Traceback") and 'ValueError: bad "value"\nover two lines' in doc["exc"]


def test_a_bad_format_string_still_gives_a_line():
    assert "%d" in _line(_record("%d tasks", "not a number"))["message"]


def test_the_context_ids_and_the_current_span_are_on_every_line(spans):
    with log_context(kind="subject", job_id="j1", stage="ingest"):
        with tracer().start_as_current_span("stage subject.ingest") as span:
            bind_tenant("t1")  # once the stage is claimed (or the request authenticated)
            doc = _line(_record("ingesting"))
        after_span = _line(_record("still the stage"))
    outside = _line(_record("between stages"))
    ctx = span.get_span_context()
    assert (
        doc["tenant_id"] == "t1"
        and doc["job_id"] == "j1"
        and doc["stage"] == "ingest"
        and doc["kind"] == "subject"
    )
    assert doc["trace_id"] == f"{ctx.trace_id:032x}" and doc["span_id"] == f"{ctx.span_id:016x}"
    assert after_span["job_id"] == "j1" and "trace_id" not in after_span
    assert not {"tenant_id", "job_id", "stage", "kind"} & set(outside)  # the block's ids ended with it
    assert spans.get_finished_spans()[0].attributes["synctalk.tenant_id"] == "t1"


def test_uvicorns_access_lines_keep_their_text_and_gain_fields():
    record = _record('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "GET", "/v1/subjects", "1.1", 200,
                     name="uvicorn.access")  # fmt: skip
    doc = _line(record)
    assert doc["message"] == '127.0.0.1:5000 - "GET /v1/subjects HTTP/1.1" 200'
    assert (doc["method"], doc["path"], doc["status"]) == ("GET", "/v1/subjects", 200)


@pytest.fixture
def root_handler():
    """The root logger with one handler writing to a buffer, put back as it was afterwards."""
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    yield buffer
    root.handlers[:] = saved
    root.setLevel(level)


def test_json_format_is_installed_on_the_handlers_and_text_leaves_them(root_handler):
    configure_logging(Settings(log_format="text"))
    logging.getLogger("synctalk.test").info("plain")
    configure_logging(Settings(log_format="json"))
    with log_context(job_id="j2"):
        logging.getLogger("synctalk.test").info("as json")
    first, second = root_handler.getvalue().splitlines()
    assert first == "INFO plain"
    assert json.loads(second) == {**json.loads(second), "message": "as json", "job_id": "j2", "level": "INFO"}
