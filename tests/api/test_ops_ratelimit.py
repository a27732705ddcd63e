"""Operations routes (/healthz, /readyz with real and dead dependencies, /metrics in Prometheus text) and
the per-key rate limit on /v1."""

from __future__ import annotations

import socket
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from datetime import timedelta

import pytest
from api_helpers import add_tenant, free_port, make_api, new_render, new_subject, postgres_url, run_job
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from services.api.ratelimit import RateLimit
from services.api.routers import ops
from shared.db.models import Stage, Webhook
from shared.queue.app import send_stage

LIMIT_HEADERS = ("ratelimit-limit", "ratelimit-remaining", "ratelimit-reset")


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """Prometheus text -> {(sample name, sorted labels): value}, parsed by prometheus_client's parser."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


# --- probes -----------------------------------------------------------------------------------------
def test_health_and_readiness_on_the_embedded_default(api):
    client = api.client("")
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    assert not any(h in r.headers for h in LIMIT_HEADERS)  # not rate limited
    r = client.get("/readyz")
    assert r.status_code == 200, r.text
    assert r.json() == {"status": "ready", "checks": {"database": "ok", "broker": "ok", "storage": "ok"}}


def test_readiness_fails_fast_when_a_dependency_is_dead_or_hangs(tmp_path, monkeypatch):
    monkeypatch.setattr(ops, "CHECK_TIMEOUT_S", 1.0)
    refused = make_api(tmp_path / "refused", broker_url=f"redis://127.0.0.1:{free_port()}/0")
    with socket.socket() as silent:  # accepts connections (the kernel does) and never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        hanging = make_api(tmp_path / "hanging", broker_url=f"redis://127.0.0.1:{silent.getsockname()[1]}/0")
        try:
            t0 = time.monotonic()
            r = refused.client("").get("/readyz")
            assert r.status_code == 503 and time.monotonic() - t0 < 5
            checks = r.json()["checks"]
            assert checks["database"] == "ok" and checks["storage"] == "ok"
            assert "refused" in checks["broker"].lower()

            t0 = time.monotonic()
            r = hanging.client("").get("/readyz")
            assert r.status_code == 503 and time.monotonic() - t0 < 5
            assert r.json()["checks"]["broker"] == "no answer within 1 s"
            assert hanging.client("").get("/healthz").status_code == 200  # alive all the same
            # the metrics still answer, without the queue depths the broker could not give
            m = hanging.client("").get("/metrics")
            assert (
                m.status_code == 200 and "synctalk_jobs" in m.text and "synctalk_queue_depth{" not in m.text
            )
        finally:
            refused.close()
            hanging.close()


# --- metrics ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("database", ["sqlite", "postgres"])
def test_metrics_count_requests_by_route_queues_jobs_and_stage_times(tmp_path, database):
    with postgres_url() if database == "postgres" else nullcontext() as url:
        api = make_api(tmp_path / "a", url)
        second = make_api(tmp_path / "b")  # another app in the same process keeps its own counts
        try:
            client = api.client()
            for render_id in ("r1", "r2", "r3"):
                assert client.get(f"/v1/renders/{render_id}").status_code == 404
            assert client.get("/v1/subjects").status_code == 200
            assert client.get("/no/such/page").status_code == 404

            platform = api.platform
            ann = new_subject(platform, api.tenant_id, "Ann")
            run_job(platform, "subject", ann)
            new_render(platform, api.tenant_id, ann)  # queued
            new_subject(platform, api.tenant_id, "Bob")  # queued
            with platform.sessions() as s:  # known stage durations
                for stage, seconds in zip(
                    s.scalars(select(Stage).where(Stage.job_id == ann).order_by(Stage.position)),
                    (1.5, 2.0, 4.0),
                    strict=True,
                ):
                    stage.started_at = stage.finished_at - timedelta(seconds=seconds)
                s.commit()
            send_stage(platform.celery, "subject", ann, "ingest")
            send_stage(platform.celery, "subject", ann, "ingest")
            send_stage(platform.celery, "render", ann, "render")

            r = client.get("/metrics")
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
            got = samples(r.text)
            route = (("method", "GET"), ("route", "/v1/renders/{render_id}"), ("status", "404"))
            assert got[("synctalk_http_requests_total", route)] == 3
            assert (
                got[
                    (
                        "synctalk_http_requests_total",
                        (("method", "GET"), ("route", "/v1/subjects"), ("status", "200")),
                    )
                ]
                == 1
            )
            assert (
                got[
                    (
                        "synctalk_http_requests_total",
                        (("method", "GET"), ("route", "(unmatched)"), ("status", "404")),
                    )
                ]
                == 1
            )
            assert got[("synctalk_http_request_seconds_count", route[:2])] == 3
            assert not any("r1" in str(key) for key in got)  # raw paths never become labels
            assert got[("synctalk_queue_depth", (("queue", "cpu"),))] == 2
            assert got[("synctalk_queue_depth", (("queue", "gpu"),))] == 1
            assert got[("synctalk_jobs", (("kind", "subject"), ("status", "succeeded")))] == 1
            assert got[("synctalk_jobs", (("kind", "subject"), ("status", "queued")))] == 1
            assert got[("synctalk_jobs", (("kind", "render"), ("status", "queued")))] == 1
            assert got[("synctalk_jobs", (("kind", "render"), ("status", "failed")))] == 0
            for stage, seconds in (("ingest", 1.5), ("preprocess", 2.0), ("train", 4.0)):
                labels = (("kind", "subject"), ("stage", stage))
                assert got[("synctalk_stage_seconds_count", labels)] == 1
                assert got[("synctalk_stage_seconds_sum", labels)] == pytest.approx(seconds, abs=0.01)

            other = samples(second.client("").get("/metrics").text)
            assert ("synctalk_http_requests_total", route) not in other
            assert other[("synctalk_jobs", (("kind", "subject"), ("status", "succeeded")))] == 0
        finally:
            api.close()
            second.close()


# --- rate limits ------------------------------------------------------------------------------------
def test_rate_limit_headers_429_per_key_and_unlimited_operations(tmp_path):
    api = make_api(tmp_path, rate_limit_per_minute=3)
    try:
        _, other_key = add_tenant(api.platform, "someone-else")
        mine, theirs, anonymous = api.client(), api.client(other_key), api.client("")

        r = mine.get("/v1/subjects")
        assert r.status_code == 200
        assert (r.headers["ratelimit-limit"], r.headers["ratelimit-remaining"]) == ("3", "2")
        assert 59 <= int(r.headers["ratelimit-reset"]) <= 60
        assert mine.get("/v1/subjects").headers["ratelimit-remaining"] == "1"
        assert mine.get("/v1/nothing-here").headers["ratelimit-remaining"] == "0"  # 404s count too

        r = mine.post("/v1/webhooks", json={"url": "https://example.com/h", "events": ["*"]})
        assert r.status_code == 429 and r.headers["content-type"] == "application/problem+json"
        assert r.json()["code"] == "rate_limited" and r.json()["status"] == 429
        assert 1 <= int(r.headers["retry-after"]) <= 60 and r.headers["ratelimit-remaining"] == "0"

        r = theirs.get("/v1/webhooks")  # another key: its own count
        assert r.status_code == 200 and r.headers["ratelimit-remaining"] == "2"
        assert r.json()["items"] == []
        assert theirs.get("/v1/webhooks", headers={"Authorization": f"Bearer {api.key}"}).status_code == 429
        with api.platform.sessions() as s:  # the refused POST never reached the app
            assert s.scalars(select(Webhook)).all() == []

        for _ in range(3):  # no key: counted by client address
            r = anonymous.get("/v1/subjects")
            assert r.status_code == 401 and "ratelimit-remaining" in r.headers
        assert anonymous.get("/v1/subjects").status_code == 429

        for path in ("/healthz", "/metrics", "/readyz"):  # operations are never limited
            for _ in range(5):
                r = mine.get(path)
                assert r.status_code == 200 and "ratelimit-limit" not in r.headers
    finally:
        api.close()


def test_wrong_keys_from_one_address_are_limited_before_the_database(tmp_path):
    api = make_api(tmp_path, rate_limit_per_minute=3)
    try:
        guesser = api.client("stk_" + "x" * 40)
        for n in range(3):
            guesser.headers["Authorization"] = f"Bearer stk_guess{n}{'y' * 30}"  # a new prefix each time
            assert guesser.get("/v1/subjects").status_code == 401
        guesser.headers["Authorization"] = "Bearer stk_guess9" + "z" * 30
        assert guesser.get("/v1/subjects").status_code == 429
    finally:
        api.close()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _tiny_app(per_minute: int, clock: Clock) -> RateLimit:
    inner = Starlette(routes=[Route("/v1/ping", lambda _request: PlainTextResponse("pong"))])
    return RateLimit(inner, per_minute=per_minute, clock=clock)


def test_the_window_resets_after_a_minute():
    clock = Clock()
    client = TestClient(_tiny_app(2, clock), headers={"Authorization": "Bearer stk_abcdefghijklmnop"})
    assert [client.get("/v1/ping").status_code for _ in range(3)] == [200, 200, 429]
    clock.now += 30
    r = client.get("/v1/ping")
    assert r.status_code == 429 and r.headers["retry-after"] == "30" and r.headers["ratelimit-reset"] == "30"
    clock.now += 30
    r = client.get("/v1/ping")
    assert r.status_code == 200 and r.text == "pong"
    assert (r.headers["ratelimit-remaining"], r.headers["ratelimit-reset"]) == ("1", "60")


def test_concurrent_requests_never_pass_the_limit():
    clock = Clock()
    app = _tiny_app(50, clock)

    def burst(_: int) -> list[int]:
        with TestClient(app, headers={"Authorization": "Bearer stk_abcdefghijklmnop"}) as client:
            return [client.get("/v1/ping").status_code for _ in range(10)]

    with ThreadPoolExecutor(max_workers=8) as pool:
        codes = [c for batch in pool.map(burst, range(8)) for c in batch]
    assert codes.count(200) == 50 and codes.count(429) == 30
