"""Operations routes (/healthz, /readyz with real and dead dependencies, /metrics in Prometheus text and
what each caller may see of it) and the rate limits: per tenant after authentication, per client
address before it, counted in memory or in a Redis shared by API processes."""

from __future__ import annotations

import re
import socket
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from datetime import timedelta

import pytest
from api_helpers import (
    Api,
    add_key,
    add_tenant,
    api_settings,
    free_port,
    make_api,
    new_render,
    new_subject,
    postgres_url,
    run_job,
)
from databases import redis_server
from prometheus_client.parser import text_string_to_metric_families
from redis import Redis
from sqlalchemy import select
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from services.api.app import create_app
from services.api.ratelimit import (
    Limiter,
    MemoryCounts,
    RateLimit,
    RedisCounts,
    client_address,
    limiter_from_settings,
    parse_networks,
)
from services.api.routers import ops
from shared.db.api_keys import PREFIX_LEN
from shared.db.models import Stage, Webhook
from shared.queue.app import send_stage

LIMIT_HEADERS = ("ratelimit-limit", "ratelimit-remaining", "ratelimit-reset")
TOKEN = "metrics-token-for-the-tests"


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
    assert not any(h in r.headers for h in LIMIT_HEADERS)  # the headers are /v1's
    r = client.get("/readyz")
    assert r.status_code == 200, r.text
    assert r.json() == {"status": "ready", "checks": {"database": "ok", "broker": "ok", "storage": "ok"}}


def test_readiness_fails_fast_when_a_dependency_is_dead_or_hangs(tmp_path, monkeypatch):
    monkeypatch.setattr(ops, "CHECK_TIMEOUT_S", 1.0)
    refused = make_api(tmp_path / "refused", broker_url=f"redis://127.0.0.1:{free_port()}/0")
    with socket.socket() as silent:  # accepts connections (the kernel does) and never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        hanging = make_api(
            tmp_path / "hanging", broker_url=f"redis://127.0.0.1:{silent.getsockname()[1]}/0",
            metrics_token=TOKEN,
        )  # fmt: skip
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
            m = hanging.client(TOKEN).get("/metrics")
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
        api = make_api(tmp_path / "a", url, metrics_token=TOKEN)
        second = make_api(tmp_path / "b", metrics_token=TOKEN)  # another app in the process: its own counts
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

            r = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
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

            other = samples(second.client(TOKEN).get("/metrics").text)
            assert ("synctalk_http_requests_total", route) not in other
            assert other[("synctalk_jobs", (("kind", "subject"), ("status", "succeeded")))] == 0
        finally:
            api.close()
            second.close()


def test_metrics_show_each_caller_only_what_it_may_see(tmp_path):
    """No credentials: requests and queue depths. The metrics token: every tenant's jobs and the stage
    durations. An API key: its own tenant's jobs. Anything else: 401."""
    api = make_api(tmp_path / "a", metrics_token=TOKEN)
    untokened = make_api(tmp_path / "b")  # no metrics token set: no bearer value shows everything
    try:
        other_id, other_key = add_tenant(api.platform, "someone-else")
        ann = new_subject(api.platform, api.tenant_id, "Ann")
        run_job(api.platform, "subject", ann)
        new_subject(api.platform, other_id, "Bob")
        new_subject(api.platform, other_id, "Cy")
        assert api.client().get("/v1/subjects").status_code == 200

        def scrape(authorization: str | None = None, on: Api = api):
            headers = {"Authorization": authorization} if authorization is not None else {}
            return on.client("").get("/metrics", headers=headers)

        def jobs(got: dict, status: str) -> float:
            return got[("synctalk_jobs", (("kind", "subject"), ("status", status)))]

        public = scrape()
        got = samples(public.text)
        assert public.status_code == 200 and ("synctalk_queue_depth", (("queue", "cpu"),)) in got
        assert any(name == "synctalk_http_requests_total" for name, _ in got)
        assert not any(name.startswith(("synctalk_jobs", "synctalk_stage_seconds")) for name, _ in got)
        assert api.tenant_id not in public.text and other_id not in public.text

        mine, theirs = samples(scrape(f"Bearer {api.key}").text), samples(scrape(f"Bearer {other_key}").text)
        assert (jobs(mine, "succeeded"), jobs(mine, "queued")) == (1, 0)
        assert (jobs(theirs, "succeeded"), jobs(theirs, "queued")) == (0, 2)
        assert not any(name.startswith("synctalk_stage_seconds") for name, _ in mine)

        everything = samples(scrape(f"Bearer {TOKEN}").text)
        assert (jobs(everything, "succeeded"), jobs(everything, "queued")) == (1, 2)
        assert everything[("synctalk_stage_seconds_count", (("kind", "subject"), ("stage", "ingest")))] == 1

        for wrong in (f"Bearer {TOKEN}x", "Bearer stk_not_a_key_at_all_0123456789", "Basic abc", "Bearer"):
            r = scrape(wrong)
            assert r.status_code == 401 and r.json()["code"] == "unauthorized", wrong
        assert scrape("Bearer ", on=untokened).status_code == 401
        assert scrape(f"Bearer {TOKEN}", on=untokened).status_code == 401
    finally:
        api.close()
        untokened.close()


# --- rate limits ------------------------------------------------------------------------------------
class Clock:
    """Wall-clock seconds for the limiter: 1000.0 is 40 s into a window (windows start at multiples of 60),
    so a test's requests never straddle two windows."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def fixed_clock(*apps) -> Clock:
    clock = Clock()
    for app in apps:
        app.state.limiter.clock = clock
    return clock


def at(api: Api, address: str, key: str | None = None) -> TestClient:
    """A client connecting from ``address``, sending ``key`` (the tenant's by default; "" for none)."""
    key = api.key if key is None else key
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    client = TestClient(api.app, headers=headers, client=(address, 40000), raise_server_exceptions=False)
    api.clients.append(client)
    return client


def test_a_tenant_has_one_budget_for_all_its_keys_with_headers_on_every_v1_response(tmp_path):
    api = make_api(tmp_path, rate_limit_per_minute=3)
    try:
        clock = fixed_clock(api.app)
        _, other_key = add_tenant(api.platform, "someone-else")
        mine, also_mine = api.client(), api.client(add_key(api.platform, api.tenant_id))
        theirs = api.client(other_key)

        r = mine.get("/v1/subjects")
        assert r.status_code == 200
        assert [r.headers[h] for h in LIMIT_HEADERS] == ["3", "2", "20"]
        assert (
            also_mine.get("/v1/subjects").headers["ratelimit-remaining"] == "1"
        )  # the tenant's, not the key's
        r = mine.get("/v1/renders/nothing-here")
        assert r.status_code == 404 and r.headers["ratelimit-remaining"] == "0"  # answers of routes count too

        r = mine.post("/v1/webhooks", json={"url": "https://example.com/h", "events": ["*"]})
        assert r.status_code == 429 and r.headers["content-type"] == "application/problem+json"
        assert r.json()["code"] == "rate_limited" and r.json()["status"] == 429
        assert r.headers["retry-after"] == "20" and r.headers["ratelimit-remaining"] == "0"
        assert also_mine.get("/v1/subjects").status_code == 429

        r = theirs.get("/v1/webhooks")  # another tenant: its own count
        assert r.status_code == 200 and r.headers["ratelimit-remaining"] == "2"
        assert r.json()["items"] == []
        with api.platform.sessions() as s:  # the refused POST never reached the route
            assert s.scalars(select(Webhook)).all() == []

        r = api.client("").get("/v1/subjects")  # no tenant known: the address's budget is shown
        assert r.status_code == 401 and r.headers["ratelimit-limit"] == "1200"
        for path in ("/healthz", "/metrics", "/readyz"):  # operations: counted by address, no headers
            r = mine.get(path)
            assert r.status_code == 200 and "ratelimit-limit" not in r.headers

        clock.now += 20  # the next window
        r = mine.get("/v1/subjects")
        assert r.status_code == 200 and [r.headers[h] for h in LIMIT_HEADERS] == ["3", "2", "60"]
    finally:
        api.close()


def test_bad_keys_with_a_tenants_prefix_never_spend_its_budget(tmp_path):
    """700 wrong keys that share a tenant's public prefix (what anyone who saw it can send) count
    against the sender's address only: the tenant's next request passes with its whole budget."""
    api = make_api(tmp_path)  # 600 a minute per tenant, 1200 per address
    try:
        prefix = api.key[:PREFIX_LEN]
        attacker = at(api, "203.0.113.66", "")
        codes = Counter(
            attacker.get("/v1/subjects", headers={"Authorization": f"Bearer {prefix}{n:040d}"}).status_code
            for n in range(700)
        )
        assert codes == {401: 700}
        r = at(api, "198.51.100.7").get("/v1/subjects")
        assert r.status_code == 200, r.text
        assert (r.headers["ratelimit-limit"], r.headers["ratelimit-remaining"]) == ("600", "599")
    finally:
        api.close()


def test_every_request_counts_against_its_address_refused_keys_included(tmp_path):
    api = make_api(tmp_path, rate_limit_ip_per_minute=3)
    try:
        fixed_clock(api.app)
        guesser = at(api, "203.0.113.66", "")
        for n in range(3):  # a new key (a new prefix) each time
            r = guesser.get("/v1/subjects", headers={"Authorization": f"Bearer stk_guess{n}{'y' * 30}"})
            assert r.status_code == 401 and r.headers["ratelimit-remaining"] == str(2 - n)
        r = guesser.get("/v1/subjects", headers={"Authorization": f"Bearer {api.key}"})
        assert (
            r.status_code == 429 and r.json()["code"] == "rate_limited" and r.headers["retry-after"] == "20"
        )
        for path in ("/healthz", "/login", "/dashboard/api/v1/subjects", "/storage/anything"):
            assert guesser.get(path).status_code == 429, path  # every route, before anything else

        r = at(api, "198.51.100.7").get("/v1/subjects")  # the tenant, from its own address, is untouched
        assert r.status_code == 200 and r.headers["ratelimit-remaining"] == "599"
    finally:
        api.close()


def _sign_in(client: TestClient, key: str) -> None:
    form = client.get("/login")
    token = re.search(r'name="login_token" value="([^"]+)"', form.text)[1]
    r = client.post("/login", data={"key": key, "login_token": token, "next": "/"}, follow_redirects=False)
    assert r.status_code == 303, r.text


def test_the_dashboard_api_spends_the_same_tenant_budget(tmp_path):
    api = make_api(tmp_path, rate_limit_per_minute=4)
    try:
        fixed_clock(api.app)
        browser, script = api.client(""), api.client()
        _sign_in(browser, api.key)  # pages are counted by address only

        r = browser.get("/dashboard/api/v1/subjects")
        assert r.status_code == 200 and (r.headers["ratelimit-limit"], r.headers["ratelimit-remaining"]) == (
            "4",
            "3",
        )
        assert script.get("/v1/subjects").headers["ratelimit-remaining"] == "2"
        assert browser.get("/dashboard/api/v1/subjects").headers["ratelimit-remaining"] == "1"
        assert script.get("/v1/subjects").headers["ratelimit-remaining"] == "0"
        r = browser.get("/dashboard/api/v1/subjects")
        assert (
            r.status_code == 429 and r.json()["code"] == "rate_limited" and r.headers["retry-after"] == "20"
        )
        assert script.get("/v1/subjects").status_code == 429
    finally:
        api.close()


def test_forwarded_for_is_believed_only_from_a_trusted_proxy(tmp_path):
    direct = make_api(tmp_path / "direct", rate_limit_ip_per_minute=2)
    proxied = make_api(
        tmp_path / "proxied", rate_limit_ip_per_minute=2, trusted_proxies="10.0.0.0/8, 192.0.2.1"
    )
    try:
        fixed_clock(direct.app, proxied.app)
        # no trusted proxy: the header is whatever the client wants it to be, and is ignored
        client = at(direct, "203.0.113.5", "")
        codes = [
            client.get("/healthz", headers={"X-Forwarded-For": f"198.51.100.{n}"}).status_code
            for n in range(3)
        ]
        assert codes == [200, 200, 429]

        proxy = at(proxied, "10.1.2.3", "")

        def via_proxy(forwarded_for: str) -> int:
            return proxy.get("/healthz", headers={"X-Forwarded-For": forwarded_for}).status_code

        assert [via_proxy("198.51.100.1") for _ in range(3)] == [200, 200, 429]
        assert via_proxy("198.51.100.2") == 200  # each client behind the proxy has a budget of its own
        assert via_proxy("1.1.1.1, 198.51.100.1") == 429  # what the client wrote left of the proxy's entry
        assert via_proxy("198.51.100.1, 192.0.2.1") == 429  # a chain of trusted proxies is walked through
        assert via_proxy("198.51.100.1, 10.9.9.9") == 429
        # a peer that is not a trusted proxy: its header is ignored
        outsider = at(proxied, "203.0.113.5", "")
        codes = [
            outsider.get("/healthz", headers={"X-Forwarded-For": f"198.51.100.{n}"}).status_code
            for n in range(3)
        ]
        assert codes == [200, 200, 429]
    finally:
        direct.close()
        proxied.close()


@pytest.mark.parametrize(
    "peer, forwarded, expected",
    [
        ("203.0.113.5", None, "203.0.113.5"),
        ("203.0.113.5", "198.51.100.1", "203.0.113.5"),  # untrusted peer: the header means nothing
        ("10.0.0.1", None, "10.0.0.1"),
        ("10.0.0.1", "198.51.100.1", "198.51.100.1"),
        ("10.0.0.1", "6.6.6.6, 198.51.100.1, 10.0.0.2", "198.51.100.1"),
        ("10.0.0.1", "10.0.0.3, 10.0.0.2", "10.0.0.3"),  # all trusted: the left-most
        ("10.0.0.1", "not-an-address", "10.0.0.1"),
        ("10.0.0.1", "198.51.100.1:5555", "198.51.100.1"),
        ("10.0.0.1", "[2001:db8:1:2::7]:443", "2001:db8:1:2::/64"),
        ("2001:db8:1:2::7", None, "2001:db8:1:2::/64"),  # one IPv6 network, one budget
        ("2001:db8:1:2:ffff::1", None, "2001:db8:1:2::/64"),
        ("::ffff:198.51.100.1", None, "198.51.100.1"),
    ],
)
def test_client_address(peer, forwarded, expected):
    headers = [(b"x-forwarded-for", forwarded.encode())] if forwarded else []
    scope = {"client": (peer, 1234), "headers": headers}
    assert client_address(scope, parse_networks("10.0.0.0/8")) == expected


def test_a_bad_trusted_proxy_setting_is_refused_at_start():
    with pytest.raises(ValueError, match="nonsense"):
        parse_networks("10.0.0.0/8, nonsense")


@pytest.fixture
def redis_url() -> str:
    return redis_server()


def test_two_api_processes_share_their_counts_through_redis(tmp_path, redis_url):
    prefix = f"synctalk-test:{uuid.uuid4().hex}:"  # this test's keys only
    first = make_api(tmp_path, rate_limit_per_minute=5, rate_limit_redis_url=redis_url)
    second = create_app(first.settings)  # the same database: the same tenant and key
    redis = Redis.from_url(redis_url)
    try:
        for app in (first.app, second):
            assert isinstance(app.state.limiter.counts, RedisCounts)
            app.state.limiter.counts.prefix = prefix
        fixed_clock(first.app, second)
        auth = {"Authorization": f"Bearer {first.key}"}
        a = TestClient(first.app, headers=auth, client=("198.51.100.1", 1))
        b = TestClient(second, headers=auth, client=("198.51.100.2", 1))
        remaining = [c.get("/v1/subjects").headers["ratelimit-remaining"] for c in (a, b, a, b, a)]
        assert remaining == ["4", "3", "2", "1", "0"]
        assert b.get("/v1/subjects").status_code == 429 and a.get("/v1/subjects").status_code == 429
        window = int(Clock().now // 60)
        assert int(redis.get(f"{prefix}tenant:{first.tenant_id}:{window}")) == 7
        assert int(redis.get(f"{prefix}ip:198.51.100.1:{window}")) == 4
        assert 0 < redis.ttl(f"{prefix}tenant:{first.tenant_id}:{window}") <= 120  # the window's key goes
    finally:
        for key in redis.scan_iter(match=f"{prefix}*"):
            redis.delete(key)
        redis.close()
        second.state.platform.engine.dispose()
        first.close()


def test_counts_go_to_the_broker_when_it_is_redis_else_stay_in_memory(tmp_path, redis_url):
    assert isinstance(limiter_from_settings(api_settings(tmp_path / "a")).counts, MemoryCounts)
    on_broker = limiter_from_settings(api_settings(tmp_path / "b", broker_url=redis_url))
    assert isinstance(on_broker.counts, RedisCounts) and on_broker.counts.url == redis_url
    own = limiter_from_settings(
        api_settings(tmp_path / "c", broker_url=redis_url, rate_limit_redis_url="redis://127.0.0.1:1/3")
    )
    assert own.counts.url == "redis://127.0.0.1:1/3"


def test_requests_pass_when_the_counts_redis_is_down_or_hangs(tmp_path, caplog):
    limits = {"rate_limit_per_minute": 1, "rate_limit_ip_per_minute": 1}
    dead = make_api(tmp_path / "dead", rate_limit_redis_url=f"redis://127.0.0.1:{free_port()}/0", **limits)
    with socket.socket() as silent:  # accepts connections (the kernel does) and never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        hung = make_api(
            tmp_path / "hung", rate_limit_redis_url=f"redis://127.0.0.1:{silent.getsockname()[1]}/0", **limits
        )
        try:
            for api in (dead, hung):
                client = api.client()
                t0 = time.monotonic()
                for _ in range(5):  # past both limits of 1: not counted, so not refused
                    r = client.get("/v1/subjects")
                    assert r.status_code == 200 and r.headers["ratelimit-limit"] == "1"
                assert client.get("/healthz").status_code == 200
                assert time.monotonic() - t0 < 3  # a hung Redis costs one short timeout, then is skipped
        finally:
            dead.close()
            hung.close()
    warnings = [r for r in caplog.records if r.name == "services.api.ratelimit"]
    assert 1 <= len(warnings) <= 2  # at most one a minute per API process


def _tiny_app(per_address: int, clock: Clock) -> RateLimit:
    inner = Starlette(routes=[Route("/v1/ping", lambda _request: PlainTextResponse("pong"))])
    return RateLimit(
        inner, Limiter(per_tenant=10**6, per_address=per_address, counts=MemoryCounts(), clock=clock)
    )


def test_the_window_resets_when_the_minute_ends():
    clock = Clock()
    client = TestClient(_tiny_app(2, clock))
    assert [client.get("/v1/ping").status_code for _ in range(3)] == [200, 200, 429]
    clock.now += 10
    r = client.get("/v1/ping")
    assert r.status_code == 429 and r.headers["retry-after"] == "10" and r.headers["ratelimit-reset"] == "10"
    clock.now += 10
    r = client.get("/v1/ping")
    assert r.status_code == 200 and r.text == "pong"
    assert (r.headers["ratelimit-remaining"], r.headers["ratelimit-reset"]) == ("1", "60")


def test_concurrent_requests_never_pass_the_limit():
    clock = Clock()
    app = _tiny_app(50, clock)

    def burst(_: int) -> list[int]:
        with TestClient(app) as client:
            return [client.get("/v1/ping").status_code for _ in range(10)]

    with ThreadPoolExecutor(max_workers=8) as pool:
        codes = [c for batch in pool.map(burst, range(8)) for c in batch]
    assert codes.count(200) == 50 and codes.count(429) == 30
