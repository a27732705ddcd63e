"""Found by tests/fuzz (schemathesis): text that no database column can hold (a NUL character, which
PostgreSQL refuses; an unpaired surrogate, which JSON escapes can carry and UTF-8 cannot) in a path, a
query or a JSON body answered 500 on PostgreSQL. Now a 422 problem on every route that reaches the
database with it. And /openapi.json documents errors as the problem+json they are."""

from __future__ import annotations

from pathlib import Path

import pytest
from api_helpers import make_api, postgres_url

from services.api.problems import PROBLEM, unstorable_text


@pytest.fixture(scope="module")
def pg_api(tmp_path_factory):
    with postgres_url() as url:
        made = make_api(tmp_path_factory.mktemp("unstorable"), url)
        yield made
        made.close()


@pytest.mark.parametrize(
    "method,path",
    [
        ("GET", "/v1/subjects/a%00b"),
        ("DELETE", "/v1/subjects/%00"),
        ("POST", "/v1/subjects/%00/cancel"),
        ("GET", "/v1/renders/a%00b"),
        ("GET", "/v1/renders/a%00b/video"),
        ("POST", "/v1/renders/%00/cancel"),
        ("POST", "/v1/renders/%00/retry"),
        ("GET", "/v1/renders?subject_id=%00"),
        ("GET", "/v1/renders?batch_id=a%00b"),
        ("GET", "/v1/batches/a%00b"),
        ("GET", "/v1/uploads/a%00b"),
        ("GET", "/v1/webhooks/%00"),
        ("DELETE", "/v1/webhooks/%00"),
        ("GET", "/v1/subjects/a%00b/curves"),
        ("GET", "/v1/subjects/a%00b/report/images"),
        # a cursor that decodes to an id with a NUL in it
        ("GET", "/v1/subjects?cursor=WyIyMDIwLTAxLTAxVDAwOjAwOjAwIiwgImFcdTAwMDBiIl0"),
    ],
)
def test_a_nul_in_the_path_or_query_is_a_422(pg_api, method, path):
    r = pg_api.client().request(method, path)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == PROBLEM
    assert r.json()["code"] == "invalid_request"
    assert "NUL" in r.json()["detail"]


@pytest.mark.parametrize(
    "path,body",
    [
        ("/v1/subjects", '{"upload_id": "a\\u0000b"}'),
        ("/v1/subjects", '{"upload_id": "\\ud800"}'),
        ("/v1/batches", '{"subject_id": "a\\u0000b", "items": [{"upload_id": "x"}]}'),
        ("/v1/batches", '{"subject_id": "s", "items": [{"upload_id": "x", "ref": "a\\udfffb"}]}'),
        ("/v1/webhooks", '{"url": "https://a\\u0000b.example.com/", "events": ["*"]}'),
        ("/v1/webhooks", '{"url": "https://example.com/\\ud800", "events": ["*"]}'),
    ],
)
def test_unstorable_text_in_a_json_body_is_a_422(pg_api, path, body):
    r = pg_api.client().post(path, content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    assert r.json()["code"] == "invalid_request"


def test_other_value_errors_stay_server_errors():
    assert unstorable_text(ValueError("A string literal cannot contain NUL (0x00) characters."))
    assert unstorable_text(UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed"))
    assert not unstorable_text(ValueError("invalid literal for int()"))
    assert not unstorable_text(TypeError("cannot contain NUL (0x00) characters"))


def test_openapi_documents_errors_as_problems(tmp_path: Path):
    api = make_api(tmp_path)
    try:
        doc = api.client("").get("/openapi.json").json()
    finally:
        api.close()
    ref = {"$ref": "#/components/schemas/Problem"}
    assert doc["components"]["schemas"]["Problem"]["required"] == [
        "type",
        "title",
        "status",
        "detail",
        "code",
    ]
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    for path, operations in doc["paths"].items():
        for op in operations.values():
            responses = op["responses"]
            if "422" in responses:
                assert responses["422"]["content"] == {PROBLEM: {"schema": ref}}, path
            if path.startswith("/v1/"):
                assert responses["default"]["content"] == {PROBLEM: {"schema": ref}}, path
