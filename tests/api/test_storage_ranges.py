"""The local storage's signed GET (the embedded default's download URLs) answers byte ranges, so an
interrupted download resumes where it stopped instead of starting again."""

from __future__ import annotations

import io

import pytest
from api_helpers import make_api
from fastapi.testclient import TestClient

from services.api.routers.files import byte_range

BODY = bytes(range(256)) * 40  # 10,240 bytes, every offset recognisable


@pytest.fixture
def signed(tmp_path):
    api = make_api(tmp_path)
    storage = api.app.state.platform.storage
    storage.put_stream("renders/r1/video.mp4", io.BytesIO(BODY), content_type="video/mp4")
    url = storage.presign_get("renders/r1/video.mp4").url
    client = TestClient(api.app)
    yield client, url[url.index("/storage/") :]
    client.close()
    api.close()


def test_a_range_request_gets_206_and_exactly_those_bytes(signed):
    client, path = signed
    whole = client.get(path)
    assert whole.status_code == 200 and whole.content == BODY
    assert whole.headers["accept-ranges"] == "bytes" and whole.headers["content-length"] == str(len(BODY))

    rest = client.get(path, headers={"Range": "bytes=4000-"})
    assert rest.status_code == 206 and rest.content == BODY[4000:]
    assert rest.headers["content-range"] == f"bytes 4000-{len(BODY) - 1}/{len(BODY)}"
    assert rest.headers["content-length"] == str(len(BODY) - 4000)

    middle = client.get(path, headers={"Range": "bytes=100-199"})
    assert middle.status_code == 206 and middle.content == BODY[100:200]
    tail = client.get(path, headers={"Range": "bytes=-10"})
    assert tail.status_code == 206 and tail.content == BODY[-10:]
    past_end = client.get(path, headers={"Range": "bytes=10000-999999"})  # clipped to the file
    assert past_end.status_code == 206 and past_end.content == BODY[10000:]


def test_an_unsatisfiable_range_is_416_with_the_size(signed):
    client, path = signed
    r = client.get(path, headers={"Range": f"bytes={len(BODY)}-"})  # a finished download asking for more
    assert r.status_code == 416 and r.headers["content-range"] == f"bytes */{len(BODY)}"
    assert r.json()["code"] == "range_not_satisfiable"
    assert client.get(path, headers={"Range": "bytes=50-10"}).status_code == 416


def test_ranges_the_server_may_ignore_get_the_whole_file(signed):
    client, path = signed
    for header in ("bytes=0-10,20-30", "items=0-5", "bytes"):
        r = client.get(path, headers={"Range": header})
        assert r.status_code == 200 and r.content == BODY, header


def test_byte_range_parsing():
    assert byte_range(None, 100) is None
    assert byte_range("bytes=0-0", 100) == (0, 0)
    assert byte_range("bytes=-500", 100) == (0, 99)
    for bad in ("bytes=x-1", "bytes=100-", "bytes=-0", "bytes=5-2"):
        with pytest.raises(ValueError):
            byte_range(bad, 100)
