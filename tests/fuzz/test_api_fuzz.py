"""Schemathesis against the API's own ``/openapi.json``: every operation, as tenant A, with a fixed seed.

The app runs for real (uvicorn, PostgreSQL, local storage, the embedded broker; conftest.py) with two
tenants. Path parameters, query parameters and body fields are drawn from what the fuzzer made up, tenant
A's own resources and tenant B's (id fields), and values that broke APIs before (``NASTY_*``), so the
requests reach the code behind the lookups and name another tenant's resources often. POSTs sometimes
carry an ``Idempotency-Key`` (reused across requests: 409s). Checks on every response:

- ``not_a_server_error``: no 5xx, on any operation, whatever the input;
- ``response_schema_conformance`` / ``content_type_conformance`` where the OpenAPI documents the status
  (error bodies are problem+json), ``negative_data_rejection`` (invalid input is a 4xx), ``ignored_auth``;
- ``tenant_isolation`` (below): nothing of tenant B's (ids, key, webhook secrets, tenant id) appears in an
  answer to A unless A's request named it, and a request naming B's resource answers exactly as the same
  request naming an id that exists nowhere (the contract's "another tenant's resource answers like a
  missing one": 404 for a path, the same empty list for a filter).

Bounded for a 2-core CI machine: ``MAX_EXAMPLES`` per operation in the fuzzing phase (30 for the event
stream, a second each), the examples and coverage phases, no stateful phase, no shrinking: about 2,100
cases in 70-80 s. Each operation's answers by status are printed (``-s``). An operation stops at its
first failing case; all operations run and every failure is reported at the end.
"""

from __future__ import annotations

import json
import os
import time
import traceback
import unittest
import uuid
from collections import Counter

import pytest
import requests
import schemathesis
from hypothesis import reject
from hypothesis import strategies as st
from schemathesis.core.result import Err

# fixed, so CI runs the same cases every time; SYNCTALK_FUZZ_SEED / SYNCTALK_FUZZ_EXAMPLES explore further
SEED = int(os.environ.get("SYNCTALK_FUZZ_SEED", "20261207"))
MAX_EXAMPLES = int(os.environ.get("SYNCTALK_FUZZ_EXAMPLES", "60"))
ID_PARAMS = {
    "subject_id": "subject",
    "render_id": "render",
    "batch_id": "batch",
    "upload_id": "upload",
    "webhook_id": "webhook",
}
# values that broke APIs before: NUL (PostgreSQL refuses it in text), long, right-to-left and astral
# text, paths, numbers past 64 bits as text; unpaired surrogates (JSON can carry them, UTF-8 cannot)
NASTY_TEXT = [
    "\x00",
    "a\x00b",
    "x" * 5000,
    "\u202e\U0001f600",
    "../../etc/passwd",
    "9223372036854775808",
    " ",
]
NASTY_JSON_TEXT = ["\ud800", "a\udfffb"]
NASTY_INT = [2**31, 2**63, -(2**63) - 1, 10**30]


@pytest.fixture(scope="module")
def api_schema(fuzz_api):
    config = schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "generation": {
                "max-examples": MAX_EXAMPLES,
                "database": "none",
                "deterministic": True,
                "no-shrink": True,
                # every case carries A's key (ignored_auth and the coverage phase still try none or a bad one)
                "with-security-parameters": False,
            },
            "phases": {"stateful": {"enabled": False}},
            "checks": {
                "enabled": False,
                "not_a_server_error": {"enabled": True},
                "response_schema_conformance": {"enabled": True},
                "content_type_conformance": {"enabled": True},
                # 413 is how the API refuses a declared size past its limits: a rejection too
                "negative_data_rejection": {
                    "enabled": True,
                    "expected-statuses": [400, 401, 403, 404, 405, 406, 409, 413, 415, 422, 428, 429],
                },
                "ignored_auth": {"enabled": True},
            },
            "auth": {"openapi": {"HTTPBearer": {"bearer": fuzz_api.key_a}}},
            "request-timeout": 10,
            # an event stream never ends: read what comes in a second (at least the "retry" line), then hang up
            # (up to 3 events: a case resuming from event 0 answers at once with A's own events)
            "operations": [
                {
                    "include-path": "/v1/events",
                    "request-timeout": 1,
                    "max-stream-events": 3,
                    "generation": {"max-examples": 30},
                }
            ],
        }
    )
    loaded = schemathesis.openapi.from_url(f"{fuzz_api.base_url}/openapi.json", config=config)
    _install_hooks(loaded, fuzz_api)
    return loaded


def _install_hooks(loaded, api) -> None:
    """Each path parameter, query parameter and field of a JSON or form body is, in turn, what the fuzzer
    made, one of A's or B's ids of its kind (id fields), or a value from ``NASTY`` of its type."""

    def choices(name: str, value, method: str, body: bool) -> st.SearchStrategy:
        options = [st.just(value)]
        kind = ID_PARAMS.get(name)
        if kind is not None:
            own = api.deletable_a if method == "DELETE" else api.ids_a
            options.append(st.sampled_from(api.ids_b[kind]))
            if own.get(kind):
                options.append(st.sampled_from(own[kind]))
        if name == "last_event_id":
            options.append(st.sampled_from(["0", "1"]))  # replay A's events from the start
        if isinstance(value, str):
            options.append(st.sampled_from(NASTY_TEXT + (NASTY_JSON_TEXT if body else [])))
        elif isinstance(value, int) and not isinstance(value, bool):
            options.append(st.sampled_from(NASTY_INT))
        return st.one_of(options)

    def mixed(values: dict, method: str, body: bool = False) -> st.SearchStrategy:
        return st.fixed_dictionaries({k: choices(k, v, method, body) for k, v in values.items()})

    @loaded.hook
    def flatmap_path_parameters(context, path_parameters):
        return mixed(path_parameters or {}, context.operation.method.upper())

    @loaded.hook
    def flatmap_query(context, query):
        return mixed(query or {}, context.operation.method.upper())

    @loaded.hook
    def flatmap_body(context, body):
        if not isinstance(body, dict):
            return st.just(body)
        method = context.operation.method.upper()
        items = body.get("items")
        if isinstance(items, list) and items and all(isinstance(i, dict) for i in items):
            drawn = st.tuples(*(mixed(i, method, True) for i in items)).map(list)
            return st.tuples(mixed(body, method, True), drawn).map(lambda pair: {**pair[0], "items": pair[1]})
        return mixed(body, method, True)

    @loaded.hook
    def flatmap_headers(context, headers):
        if context.operation.method.upper() != "POST":
            return st.just(headers)
        keys = st.sampled_from([None, "fuzz-key-1", "fuzz-key-2", "k" * 300, "-"])
        return keys.map(lambda k: headers if k is None else {**(headers or {}), "Idempotency-Key": k})


def _request_text(request) -> str:
    body = request.body or b""
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    return f"{request.url}\n{json.dumps(dict(request.headers))}\n{body}"


def _replay(request, replace: dict[str, str]) -> tuple[int, str | None]:
    """The same request (as sent: headers, auth or none) with B's ids swapped for ids of the same length
    that exist nowhere: (status, problem code)."""

    def swap(text):
        for old, new in replace.items():
            text = (
                text.replace(old, new) if isinstance(text, str) else text.replace(old.encode(), new.encode())
            )
        return text

    again = request.copy()
    again.url = swap(request.url)
    if request.body:
        again.body = swap(request.body)
    for name, value in list(again.headers.items()):
        again.headers[name] = swap(value)
    with requests.Session() as session, session.send(again, stream=True, timeout=10) as r:
        if r.headers.get("content-type", "").startswith("text/event-stream"):
            return r.status_code, None
        code = None
        if r.headers.get("content-type", "").endswith("json") and r.content:
            body = r.json()
            code = body.get("code") if isinstance(body, dict) else None
        return r.status_code, code


def make_tenant_isolation(api):
    foreign = api.foreign

    def tenant_isolation(ctx, response, case) -> None:
        sent = _request_text(response.request)
        named = {s for s in foreign if s in sent}
        seen = response.text_lossy() + "\n" + json.dumps(dict(response.headers))
        leaked = sorted(s for s in foreign - named if s in seen)
        assert not leaked, f"the answer to tenant A holds tenant B's {leaked}"
        ids_named = named & {i for ids in api.ids_b.values() for i in ids}
        if not ids_named:
            return
        status, code = _replay(response.request, {i: uuid.uuid4().hex for i in ids_named})
        mine = None
        if response.headers.get("content-type", [""])[0].endswith("json") and response.content:
            try:
                body = response.json()
                mine = body.get("code") if isinstance(body, dict) else None
            except ValueError:
                pass
        assert (response.status_code, mine) == (status, code), (
            f"naming tenant B's {sorted(ids_named)} answered {response.status_code} {mine!r}; "
            f"the same request naming ids that exist nowhere answers {status} {code!r}"
        )

    return tenant_isolation


def _describe(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup) and not str(exc).startswith("Schemathesis found"):
        return "\n".join(_describe(e) for e in exc.exceptions)
    text = str(exc)
    if "Schemathesis found" not in text:  # not a check's report: where it came from
        text = "".join(traceback.format_exception(exc, limit=-4))
    return text


@pytest.mark.fuzz
def test_api_fuzz(api_schema, fuzz_api):
    # schemathesis.pytest.from_fixture's runner does what this loop does, but sets Node._nodeid, which
    # pytest 9.2 no longer has; its per-operation test builder is the same either way
    from schemathesis.pytest.lazy import get_all_tests

    isolation = make_tenant_isolation(fuzz_api)

    statuses: dict[str, Counter] = {}

    def one_case(case) -> None:
        try:
            response = case.call()
        except (UnicodeEncodeError, requests.exceptions.InvalidHeader):
            reject()  # the client cannot send it (a surrogate in a form field, a bad header): not the API's
        statuses.setdefault(case.operation.label, Counter())[response.status_code] += 1
        case.validate_response(response, additional_checks=[isolation])

    failures, operations = [], 0
    for result in get_all_tests(schema=api_schema, test_func=one_case, settings=None, given_kwargs={}):
        if isinstance(result, Err):
            failures.append(f"schema error: {result.err()}")
            continue
        operation, test = result.ok()
        operations += 1
        started = time.monotonic()
        try:
            test()
        except unittest.SkipTest as exc:
            print(f"{operation.label}: skipped ({exc})")
        # every operation runs; all failures are told at the end
        except (Exception, BaseExceptionGroup) as exc:
            failures.append(f"{operation.label}:\n{_describe(exc)}")
        seen = statuses.get(operation.label, Counter())
        print(f"{operation.label}: {time.monotonic() - started:.1f} s, {dict(sorted(seen.items()))}")
    assert operations >= 25, f"only {operations} operations in the schema"
    assert not failures, "\n\n".join(failures)
