"""The platform scaled out, as on Kubernetes: two API processes (the first itself two uvicorn processes),
two cpu workers, two gpu workers and the scheduler, on PostgreSQL, Redis and S3 (moto's server), all as
real OS processes (tests/faults/stack.py). Requests alternate between the two APIs, as a load balancer
spreads them.

What it shows: a job created on one replica is seen, streamed and finished on the other; an
Idempotency-Key holds across replicas; a revoked key stops working on every replica within
``api_key_cache_s``; two renders queued at once run on the two gpu workers, one each (a worker takes one
task at a time); request metrics of an API's processes add up whichever process answers the scrape; the
scheduler's metrics see every worker and the jobs that ended."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "faults"))  # the real stack's harness

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402
from stack import ServiceMissing, Stack, free_port, postgres_server_url, redis_server_binary, wait_until  # noqa: E402

pytestmark = pytest.mark.slow
KEY_CACHE_S = 2


def _stack_or_skip(root: Path) -> Stack:
    import os

    try:
        redis_server_binary()
        url = postgres_server_url()
    except ServiceMissing as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must provide it: {exc}")
        pytest.skip(str(exc))
    return Stack(root, postgres_url=url, api_key_cache_s=KEY_CACHE_S, scheduler_metrics_port=free_port())


def _start_api(stack: Stack, name: str, port: int, processes: int) -> str:
    url = f"http://127.0.0.1:{port}"
    stack.start(name, "api", "--port", str(port), "--workers", str(processes))

    def healthy() -> bool:
        if not stack.alive(name):
            raise RuntimeError(stack.log_tail(name))
        try:
            return httpx.get(f"{url}/healthz", timeout=2, trust_env=False).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(healthy, 120, what=f"{name} answers")
    return url


def _samples(text: str) -> dict[tuple[str, tuple], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _presigned(client: httpx.Client, path: Path, content_type: str) -> str:
    data = path.read_bytes()
    r = client.post(
        "/v1/uploads", json={"filename": path.name, "content_type": content_type, "bytes": len(data)}
    )
    assert r.status_code == 201, r.text
    up = r.json()
    put = httpx.put(
        up["url"], content=data, headers={"Content-Type": content_type}, timeout=60, trust_env=False
    )
    assert put.status_code in (200, 204), put.text
    return up["id"]


def test_two_apis_two_workers_per_queue_and_the_scheduler(tmp_path, sample_subject, sample_subject_b):
    stack = _stack_or_skip(tmp_path / "stack")
    try:
        stack.up()
        urls = [_start_api(stack, "api-a", stack.api_port, 2), _start_api(stack, "api-b", free_port(), 1)]
        stack.start_scheduler()
        for name, queue in (("cpu-1", "cpu"), ("cpu-2", "cpu"), ("gpu-1", "gpu"), ("gpu-2", "gpu")):
            stack.start_worker(queue, name=name)
        for name in ("cpu-1", "cpu-2", "gpu-1", "gpu-2"):
            stack.wait_log(name, "ready.", timeout=180)
        auth = {"Authorization": f"Bearer {stack.key}"}
        a, b = (httpx.Client(base_url=u, headers=auth, timeout=60, trust_env=False) for u in urls)
        _scenario(stack, a, b, sample_subject.video, sample_subject_b.speech)
    except BaseException:
        print(stack.tail_logs(60))
        raise
    finally:
        stack.stop_all()


def _scenario(stack: Stack, a: httpx.Client, b: httpx.Client, video_file: Path, speech_file: Path) -> None:
    # a job created on one replica; the same Idempotency-Key on the other finds it
    video = _presigned(a, video_file, "video/mp4")
    body = {"upload_id": video, "name": "Ann"}
    created = b.post("/v1/subjects", json=body, headers={"Idempotency-Key": "ann-1"})
    assert created.status_code == 202, created.text
    subject_id = created.json()["id"]
    again = a.post("/v1/subjects", json=body, headers={"Idempotency-Key": "ann-1"})
    assert again.json()["id"] == subject_id
    assert stack.db("SELECT count(*) AS n FROM subjects")[0]["n"] == 1

    # its events, streamed from the replica that did not create it, through to its end
    statuses: list[str] = []
    with a.stream(
        "GET", f"/v1/events?subject_id={subject_id}", timeout=httpx.Timeout(60, read=600)
    ) as stream:
        for line in stream.iter_lines():
            if not line.startswith("data:"):
                continue
            doc = json.loads(line.removeprefix("data:"))
            if doc.get("id") == subject_id:
                statuses.append(doc["status"])
                if doc["status"] in ("succeeded", "failed", "canceled"):
                    break
    assert statuses[-1] == "succeeded", (statuses, stack.tail_logs(40))
    assert b.get(f"/v1/subjects/{subject_id}").json()["status"] == "succeeded"

    # two renders queued at once (one through each replica) run on the two gpu workers, one each
    speech = _presigned(b, speech_file, "audio/wav")
    renders = [
        client.post(f"/v1/subjects/{subject_id}/renders", json={"upload_id": speech, "ref": f"line-{i}"})
        for i, client in enumerate((a, b))
    ]
    assert all(r.status_code == 202 for r in renders), [r.text for r in renders]
    ids = [r.json()["id"] for r in renders]
    for i, render_id in enumerate(ids):
        client = (b, a)[i]  # polled on the replica that did not create it
        wait_until(
            lambda c=client, r=render_id: c.get(f"/v1/renders/{r}").json()["status"] in ("succeeded", "failed"),
            600, every=1.0, what=f"render {render_id}",
        )  # fmt: skip
        assert client.get(f"/v1/renders/{render_id}").json()["status"] == "succeeded"
    ran_in = {
        int(stack.stages(r)[0]["worker"].rsplit(":", 1)[1]) for r in ids
    }  # host:pid of the pool process
    owners = {name for name in ("gpu-1", "gpu-2") for pid in ran_in if pid in stack.pool_children(name)}
    assert owners == {"gpu-1", "gpu-2"}, (ran_in, {n: stack.pool_children(n) for n in ("gpu-1", "gpu-2")})
    link = a.get(f"/v1/renders/{ids[1]}/video")  # created through b, fetched through a: straight from S3
    assert link.status_code in (302, 307) and link.headers["location"].startswith(stack.s3_url), link.text
    assert httpx.get(link.headers["location"], timeout=60, trust_env=False).content[4:8] == b"ftyp"

    # request metrics: the first API's two processes counted together, whichever answers the scrape
    before = _route_count(a, "/v1/subjects")
    for _ in range(20):
        assert a.get("/v1/subjects").status_code == 200
    # (a request is counted just after its answer went out: the last one may take a moment)
    wait_until(lambda: _route_count(a, "/v1/subjects") == before + 20, 10, what="the twenty counted")
    for _ in range(6):  # more scrapes: each process answers some of them; all see the twenty
        assert _route_count(a, "/v1/subjects") == before + 20

    # the scheduler's view of the deployment
    m = _samples(
        httpx.get(f"http://127.0.0.1:{stack.settings['scheduler_metrics_port']}/metrics", timeout=10).text
    )
    assert m[("synctalk_workers", (("queue", "gpu"),))] == 2
    assert m[("synctalk_workers", (("queue", "cpu"),))] == 2
    assert m[("synctalk_jobs_finished_last_hour", (("kind", "render"), ("status", "succeeded")))] == 2
    assert m[("synctalk_stages", (("queue", "gpu"), ("status", "queued")))] == 0
    assert m[("synctalk_scheduler_leader", ())] == 1

    # a key revoked on the database stops working on every replica within api_key_cache_s
    key = stack.create_key("revoked")
    for client in (a, b):
        assert client.get("/v1/subjects", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    stack.run("keys", "revoke", key[:12], env=stack.env(direct_db=True))
    time.sleep(KEY_CACHE_S + 0.5)
    for client in (a, b):
        for _ in range(4):  # every process of each replica
            assert client.get("/v1/subjects", headers={"Authorization": f"Bearer {key}"}).status_code == 401


def _route_count(client: httpx.Client, route: str) -> float:
    text = client.get("/metrics").text
    return sum(
        v for (name, labels), v in _samples(text).items()
        if name == "synctalk_http_requests_total" and dict(labels).get("route") == route
        and dict(labels).get("method") == "GET"
    )  # fmt: skip
