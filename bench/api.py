"""API latency and bulk creation against the real stack (PostgreSQL, Redis, S3 on loopback).

    SYNCTALK_TEST_POSTGRES_URL=postgresql+psycopg2://postgres@127.0.0.1:5432/test \
    SYNCTALK_TEST_REDIS_URL=redis://127.0.0.1:6379/15 python bench/api.py [--seconds 10] [--batch-total 10000]

Starts moto's S3 server and one API process (uvicorn, no workers: nothing is rendered; the queued
tasks are purged afterwards), a tenant, a subject marked trained and one uploaded speech track. Then:
open-loop load (requests sent on a fixed schedule, whatever the answers' speed) of GET /v1/renders/{id}
and POST /v1/subjects/{id}/renders at 50 and 200 requests/s, p50/p99 of the latency; and the time to
create --batch-total renders through POST /v1/batches (1000 per call, one upload reused: it is probed
once). Record figures in docs/BENCHMARKS.md with `uptime`'s load.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click
import httpx
import numpy as np
import uvloop

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "platform"))


class RawHttp:
    """A lean HTTP/1.1 client over kept-alive loopback connections: the load generator must cost far
    less CPU than the server it measures (httpx spends about as much per request as the API itself,
    and on 2 cores its own backlog then reads as server latency)."""

    def __init__(self, base: str, key: str) -> None:
        url = httpx.URL(base)
        self.host, self.port = url.host, url.port
        self.auth = f"Authorization: Bearer {key}\r\nHost: {self.host}\r\n"
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def request(self, method: str, path: str, body: bytes = b"") -> int:
        conn = self.idle.pop() if self.idle else await asyncio.open_connection(self.host, self.port)
        reader, writer = conn
        kind = "Content-Type: application/json\r\n" if body else ""
        writer.write(
            f"{method} {path} HTTP/1.1\r\n{self.auth}{kind}Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        status = int((await reader.readline()).split()[1])
        length = 0
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        await reader.readexactly(length)
        self.idle.append(conn)
        return status

    def close(self) -> None:
        for _, writer in self.idle:
            writer.close()


async def _open_loop(make, rate: float, seconds: float) -> np.ndarray:
    """Start ``make()`` (-> HTTP status) at ``rate`` per second for ``seconds``, whatever the answers'
    speed; each latency (ms) counts from the request's scheduled time, so a backlog is not hidden."""
    lat: list[float] = []
    errors = 0

    async def one(scheduled: float) -> None:
        nonlocal errors
        try:
            if await make() >= 400:
                errors += 1
        except (OSError, ValueError, IndexError, asyncio.IncompleteReadError):
            errors += 1
        lat.append((time.perf_counter() - scheduled) * 1000)

    tasks = []
    start = time.perf_counter()
    for i in range(int(rate * seconds)):
        at = start + i / rate
        delay = at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(at)))
    await asyncio.gather(*tasks)
    if errors:
        click.echo(f"    {errors} errors")
    return np.asarray(lat)


@click.command()
@click.option("--seconds", default=10.0, show_default=True, help="Length of each load run.")
@click.option("--batch-total", default=10_000, show_default=True, help="Renders created through batches.")
@click.option("--workers", default=1, show_default=True, help="API processes (synctalk api --workers).")
def main(seconds: float, batch_total: int, workers: int) -> None:
    import redis
    from platform_helpers import MotoS3, free_port, platform_env, postgres_database, synctalk

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a timeout's TERM still stops the API and moto
    pg, rd = os.environ["SYNCTALK_TEST_POSTGRES_URL"], os.environ["SYNCTALK_TEST_REDIS_URL"]
    click.echo(f"load: {os.getloadavg()[0]:.2f} (1 min) on {os.cpu_count()} cores; {workers} API process(es)")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        db_url, drop = postgres_database(pg)
        s3 = MotoS3(tmp / "moto.log")
        port = free_port()
        env = platform_env(
            tmp / "data", port, database_url=db_url, broker_url=rd, storage_url="s3://bench",
            s3_endpoint_url=s3.url, rate_limit_per_minute="10000000", rate_limit_ip_per_minute="10000000",
        )  # fmt: skip
        env.update(MotoS3.ENV, NO_PROXY="127.0.0.1,localhost")
        api = None
        try:
            synctalk(env, "migrate")
            key = synctalk(env, "keys", "create", "--tenant", "bench").strip().splitlines()[-1]
            api = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "services.api.app:create_app", "--factory", "--port", str(port),
                 "--log-level", "warning", "--workers", str(workers)], env=env, cwd=ROOT,
            )  # fmt: skip
            base = f"http://127.0.0.1:{port}"
            while True:
                try:
                    if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.3)
            uvloop.run(
                _run(base, key, db_url, tmp, seconds, batch_total)
            )  # the lighter loop, as the API runs
        finally:
            if api is not None:
                api.terminate()
                api.wait(10)
            redis.Redis.from_url(rd).delete("cpu", "gpu")
            s3.stop()
            drop()


async def _run(base: str, key: str, db_url: str, tmp: Path, seconds: float, batch_total: int) -> None:
    from sqlalchemy import update

    from gpu_worker.media.audio import write_wav
    from gpu_worker.media.binaries import ffmpeg_exe
    from shared.db.models import Subject
    from shared.db.session import make_engine, session_scope
    from shared.settings import Settings

    headers = {"Authorization": f"Bearer {key}"}
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=60, limits=limits) as c:
        # a subject marked trained (no workers run here) and one uploaded speech track
        speech = write_wav(tmp / "line.wav", 0.3 * np.sin(np.arange(16000 * 2) / 10.0), 16000)
        video = tmp / "v.mp4"
        lavfi = [
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=64x48:rate=25:duration=5",
            "-f",
            "lavfi",
            "-i",
            "sine=duration=5",
        ]
        subprocess.run(
            [ffmpeg_exe(), "-v", "error", *lavfi, "-c:v", "libx264", "-c:a", "aac", "-shortest", str(video)],
            check=True,
        )
        with open(video, "rb") as fh:
            subject = (await c.post("/v1/subjects", files={"video": ("v.mp4", fh, "video/mp4")})).json()
        engine = make_engine(Settings(database_url=db_url))
        with session_scope(engine) as s:
            s.execute(update(Subject).where(Subject.id == subject["id"]).values(status="succeeded"))
        engine.dispose()
        with open(speech, "rb") as fh:
            first = (
                await c.post(
                    f"/v1/subjects/{subject['id']}/renders", files={"audio": ("l.wav", fh, "audio/wav")}
                )
            ).json()
        upload_id = await _upload_of(c, first["id"], db_url)

        raw = RawHttp(base, key)
        for rate in (50, 200):
            lat = await _open_loop(lambda: raw.request("GET", f"/v1/renders/{first['id']}"), rate, seconds)
            click.echo(
                f"GET /v1/renders/{{id}} at {rate}/s: p50 {np.percentile(lat, 50):.1f} ms, p99 {np.percentile(lat, 99):.1f} ms ({len(lat)} requests)"
            )
            body = json.dumps({"upload_id": upload_id}).encode()
            lat = await _open_loop(
                lambda b=body: raw.request("POST", f"/v1/subjects/{subject['id']}/renders", b), rate, seconds
            )
            click.echo(
                f"POST /v1/subjects/{{id}}/renders at {rate}/s: p50 {np.percentile(lat, 50):.1f} ms, p99 {np.percentile(lat, 99):.1f} ms ({len(lat)} requests)"
            )

        raw.close()

        items = [{"upload_id": upload_id, "ref": f"line-{i}"} for i in range(1000)]
        t = time.perf_counter()
        made = 0
        while made < batch_total:
            n = min(1000, batch_total - made)
            r = await c.post("/v1/batches", json={"subject_id": subject["id"], "items": items[:n]})
            assert r.status_code == 202, r.text
            made += len(r.json()["renders"])
        click.echo(
            f"{made} renders through POST /v1/batches (1000 per call): {time.perf_counter() - t:.1f} s"
        )


async def _upload_of(c: httpx.AsyncClient, render_id: str, db_url: str) -> str:
    from shared.db.models import Render
    from shared.db.session import make_engine, session_scope
    from shared.settings import Settings

    engine = make_engine(Settings(database_url=db_url))
    with session_scope(engine) as s:
        upload_id = s.get(Render, render_id).upload_id
    engine.dispose()
    return upload_id


if __name__ == "__main__":
    main()
