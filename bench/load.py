"""Many clients at once against ONE API process on the real stack (PostgreSQL, Redis, S3 on loopback).

    SYNCTALK_TEST_POSTGRES_URL=postgresql+psycopg2://postgres@127.0.0.1:5432/test \
    SYNCTALK_TEST_REDIS_URL=redis://127.0.0.1:6379/15 python bench/load.py [--clients 500] [--seconds 300]

Starts moto's S3 server and `synctalk api` (one process, uvloop + httptools; no workers: renders of a
subject that is not trained stay queued, which is all the API's side of the load needs) on a scratch
Postgres database with Redis as broker (and rate-limit store), rate limits set out of reach. Makes
``--tenants`` tenants, each with a key (written to the database as `synctalk keys create` does), a
subject (a 5 s clip, over HTTP) and one speech upload. Then ``--clients`` clients, spread over the
tenants and started over ``--ramp`` seconds, each with two kept-alive connections for ``--seconds``:

- a loop: create a render (``POST /v1/subjects/{id}/renders`` naming the upload), read its status
  (``GET /v1/renders/{id}``) ``--polls`` times, list the tenant's renders (``GET /v1/renders?limit=20``)
  every fourth round; a pause of ``--think`` seconds (x0.5-1.5, random) between requests;
- an event stream (``GET /v1/events``, the tenant's, as a dashboard holds it), reconnecting if it drops.

Prints requests by kind with their statuses, server errors (5xx; goal 0), 429s, client-side failures,
p50/p95/p99 latency per kind (a request's full answer; ``events``: the stream's headers, every connect
of the run, the ramp's included; ``event lag``:
from a create's answer to its ``queued`` event arriving on each stream of its tenant), throughput, CPU of
the load generator, the API process, PostgreSQL and Redis, the database's connections, and what limited
the run. Figures after the ramp only. Record them in docs/BENCHMARKS.md with `uptime`'s load.

The load generator is one asyncio process with a lean raw-HTTP/1.1 client (bench/api.py's reasoning:
httpx costs as much CPU per request as the API); on a 2-core machine it shares the cores with the API,
PostgreSQL and Redis, so its own CPU is printed too.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import click
import httpx
import numpy as np
import uvloop

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "platform"))

UNLIMITED = "1000000000"
FIRST_ID = re.compile(rb'"id":"([0-9a-f]{32})"')
TICK = os.sysconf("SC_CLK_TCK")


class Conn:
    """One kept-alive HTTP/1.1 connection, requests one at a time: (status, body)."""

    def __init__(self, host: str, port: int, key: str) -> None:
        self.host, self.port = host, port
        self.head = f"Host: {host}\r\nAuthorization: Bearer {key}\r\n"
        self.rw: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        if self.rw is None:
            self.rw = await asyncio.open_connection(self.host, self.port)
        reader, writer = self.rw
        kind = "Content-Type: application/json\r\n" if body else ""
        writer.write(
            f"{method} {path} HTTP/1.1\r\n{self.head}{kind}Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        try:
            status, headers = await read_head(reader)
            if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
                content = b"".join([chunk async for chunk in read_chunks(reader)])
            else:
                content = await reader.readexactly(int(headers.get(b"content-length", b"0")))
        except BaseException:
            self.close()  # a half-read answer leaves the connection unusable
            raise
        if headers.get(b"connection", b"").lower() == b"close":
            self.close()
        return status, content

    def close(self) -> None:
        if self.rw is not None:
            self.rw[1].close()
            self.rw = None


async def read_head(reader: asyncio.StreamReader) -> tuple[int, dict[bytes, bytes]]:
    line = await reader.readline()
    if not line:
        raise ConnectionResetError("the server closed the connection")
    status = int(line.split()[1])
    headers = {}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    return status, headers


async def read_chunks(reader: asyncio.StreamReader):
    while True:
        size = int((await reader.readline()).split(b";")[0], 16)
        if size == 0:
            await reader.readline()
            return
        chunk = await reader.readexactly(size + 2)
        yield chunk[:-2]


@dataclass
class Stats:
    start: float = 0.0  # measuring starts here (after the ramp)
    latency: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    statuses: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    failures: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))  # client-side
    created: dict[str, float] = field(default_factory=dict)  # render id -> when its create answered
    events: int = 0
    drops: int = 0

    def record(self, kind: str, began: float, status: int) -> None:
        if began >= self.start or kind == "events":  # streams connect during the ramp: all of them count
            self.latency[kind].append((time.perf_counter() - began) * 1000)
            self.statuses[kind][status] += 1

    def failed(self, kind: str, began: float, exc: BaseException) -> None:
        if began >= self.start:
            self.failures[kind][type(exc).__name__] += 1


async def pause(think: float) -> None:
    await asyncio.sleep(think * random.uniform(0.5, 1.5))


async def client(
    stats: Stats, base: httpx.URL, tenant: dict, think: float, polls: int, end: float, delay: float
) -> None:
    await asyncio.sleep(delay)
    conn = Conn(base.host, base.port, tenant["key"])
    create = json.dumps({"upload_id": tenant["upload"]}).encode()
    render_id, rounds = None, 0

    async def call(kind: str, method: str, path: str, body: bytes = b"") -> tuple[int, bytes] | None:
        began = time.perf_counter()
        try:
            status, content = await asyncio.wait_for(conn.request(method, path, body), 60)
        except (OSError, ValueError, IndexError, asyncio.IncompleteReadError, TimeoutError) as exc:
            stats.failed(kind, began, exc)
            conn.close()
            return None
        stats.record(kind, began, status)
        return status, content

    try:
        while time.perf_counter() < end:
            answer = await call("create", "POST", f"/v1/subjects/{tenant['subject']}/renders", create)
            if answer is not None and answer[0] == 202 and (m := FIRST_ID.search(answer[1])):
                render_id = m.group(1).decode()
                stats.created[render_id] = time.perf_counter()
            for _ in range(polls):
                await pause(think)
                if time.perf_counter() >= end:
                    return
                if render_id is not None:
                    await call("status", "GET", f"/v1/renders/{render_id}")
            if rounds % 4 == 0:
                await pause(think)
                await call("list", "GET", "/v1/renders?limit=20")
            rounds += 1
            await pause(think)
    finally:
        conn.close()


async def stream(stats: Stats, base: httpx.URL, tenant: dict, end: float, delay: float) -> None:
    """The tenant's event stream, held open to the end (reconnecting like EventSource after a drop)."""
    await asyncio.sleep(delay)
    request = (
        f"GET /v1/events HTTP/1.1\r\nHost: {base.host}\r\nAuthorization: Bearer {tenant['key']}\r\n"
        "Accept: text/event-stream\r\n\r\n"
    ).encode()
    while time.perf_counter() < end:
        began = time.perf_counter()
        writer = None
        try:
            reader, writer = await asyncio.open_connection(base.host, base.port)
            writer.write(request)
            status, _ = await asyncio.wait_for(read_head(reader), 60)
            stats.record("events", began, status)
            if status != 200:
                await asyncio.sleep(2)
                continue
            async for chunk in read_chunks(reader):
                for m in FIRST_ID.finditer(chunk):
                    made = stats.created.get(m.group(1).decode())
                    now = time.perf_counter()
                    if made is not None and made >= stats.start:
                        stats.latency["event lag"].append(max(0.0, now - made) * 1000)
                        stats.events += 1
            stats.drops += 1  # the server ended the stream
        except (OSError, ValueError, IndexError, asyncio.IncompleteReadError, TimeoutError) as exc:
            stats.failed("events", began, exc)
            await asyncio.sleep(2)
        finally:
            if writer is not None:
                writer.close()


def cpu_of(pids: list[int]) -> dict[int, float]:
    """CPU seconds (user + system) of each process still there."""
    out = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            out[pid] = (int(fields[11]) + int(fields[12])) / TICK  # utime, stime
        except (OSError, IndexError, ValueError):
            pass
    return out


def cpu_seconds(pids: list[int]) -> float:
    return sum(cpu_of(pids).values())


def postgres_cpu() -> float:
    """CPU seconds of the PostgreSQL server so far: the postmaster, its live backends and (cutime, cstime)
    every backend that ended: backends come and go with the API's overflow connections."""
    total = 0
    pids = pids_named("postgres")
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
        if int(fields[1]) not in pids:  # the postmaster: its children that ended
            total += int(fields[13]) + int(fields[14])
    return total / TICK


def pids_named(*names: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                comm = (entry / "comm").read_text().strip()
            except OSError:
                continue
            if comm.startswith(names):
                found.append(int(entry.name))
    return found


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of all cores since boot."""
    parts = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = parts[3] + parts[4]
    return sum(parts) - idle, sum(parts)


class Sampler(threading.Thread):
    """Every second: the API process's CPU share (of one core) and the database's connections by state."""

    def __init__(self, api_pid: int, db_url: str, db_name: str) -> None:
        super().__init__(daemon=True)
        from sqlalchemy import create_engine

        self.api_pid, self.db_name = api_pid, db_name
        self.engine = create_engine(db_url.rsplit("/", 1)[0] + "/postgres", pool_size=1)
        self.api_cpu: list[float] = []
        self.active: list[int] = []
        self.connections: list[int] = []
        self.sessions_opened = 0  # database connections opened during the run (pg_stat_database.sessions)
        self.stop = threading.Event()

    def run(self) -> None:
        from sqlalchemy import text

        last, at = cpu_seconds([self.api_pid]), time.perf_counter()
        opened = text("SELECT sessions FROM pg_stat_database WHERE datname = :d")
        with self.engine.connect() as conn:
            first = conn.execute(opened, {"d": self.db_name}).scalar() or 0
            while not self.stop.wait(1.0):
                now_cpu, now = cpu_seconds([self.api_pid]), time.perf_counter()
                self.api_cpu.append((now_cpu - last) / (now - at) * 100)
                last, at = now_cpu, now
                rows = conn.execute(
                    text("SELECT state, count(*) FROM pg_stat_activity WHERE datname = :d GROUP BY state"),
                    {"d": self.db_name},
                ).all()
                by_state = {state: n for state, n in rows}
                self.active.append(by_state.get("active", 0))
                self.connections.append(sum(by_state.values()))
            conn.rollback()  # a fresh snapshot of the statistics
            self.sessions_opened = (conn.execute(opened, {"d": self.db_name}).scalar() or 0) - first
        self.engine.dispose()


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


@click.command()
@click.option("--clients", default=500, show_default=True, help="Concurrent clients.")
@click.option("--seconds", default=300.0, show_default=True, help="Length of the run (the ramp included).")
@click.option(
    "--ramp", default=20.0, show_default=True, help="Seconds over which clients start (not measured)."
)
@click.option("--tenants", default=50, show_default=True, help="Tenants the clients are spread over.")
@click.option("--think", default=2.0, show_default=True, help="Mean pause between a client's requests, s.")
@click.option("--polls", default=3, show_default=True, help="Status reads after each create.")
@click.option(
    "--streams/--no-streams", default=True, show_default=True, help="Each client holds an event stream."
)
def main(
    clients: int, seconds: float, ramp: float, tenants: int, think: float, polls: int, streams: bool
) -> None:
    import redis
    from platform_helpers import MotoS3, free_port, platform_env, postgres_database, synctalk

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a timeout's TERM still stops the API and moto
    pg, rd = os.environ["SYNCTALK_TEST_POSTGRES_URL"], os.environ["SYNCTALK_TEST_REDIS_URL"]
    load_before = os.getloadavg()
    click.echo(
        f"load before: {load_before[0]:.2f} / {load_before[1]:.2f} / {load_before[2]:.2f} on {os.cpu_count()} "
        f"cores; {clients} clients over {tenants} tenants, {seconds:.0f} s (ramp {ramp:.0f} s), think "
        f"{think:g} s, {polls} polls, streams {'on' if streams else 'off'}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        db_url, drop = postgres_database(pg)
        s3 = MotoS3(tmp / "moto.log")
        port = free_port()
        env = platform_env(
            tmp / "data", port, database_url=db_url, broker_url=rd, storage_url="s3://bench",
            s3_endpoint_url=s3.url, rate_limit_per_minute=UNLIMITED, rate_limit_ip_per_minute=UNLIMITED,
            secret_key="bench-load-secret-key-0123456789abcdef",
        )  # fmt: skip
        env.update(MotoS3.ENV, NO_PROXY="127.0.0.1,localhost")
        api = None
        log = open(tmp / "api.log", "wb")  # noqa: SIM115 - closed below
        try:
            synctalk(env, "migrate")
            api = subprocess.Popen(
                [sys.executable, "-m", "services.cli.main", "api", "--port", str(port)],
                env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    if api.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError("the API did not start") from None
                    time.sleep(0.3)
            made = _tenants(base, db_url, tmp, tenants, env["SYNCTALK_SECRET_KEY"])
            uvloop.run(
                _run(base, made, api.pid, db_url, clients, seconds, ramp, think, polls, streams, load_before)
            )
        finally:
            if api is not None:
                api.terminate()
                api.wait(20)
            log.close()
            _server_log(tmp / "api.log")
            redis.Redis.from_url(rd).delete("cpu", "gpu")
            s3.stop()
            drop()


def _server_log(path: Path) -> None:
    """What the API logged as errors: each traceback's last line (the exception), counted."""
    lines = path.read_text(errors="replace").splitlines()
    errors: Counter = Counter()
    for i, line in enumerate(lines):
        if line.startswith("Traceback"):
            j = i + 1
            while j < len(lines) and (lines[j].startswith((" ", "\t")) or not lines[j].strip()):
                j += 1
            if j < len(lines):
                errors[lines[j][:200]] += 1
    logged = sum("unhandled error" in line or "Exception in ASGI" in line for line in lines)
    click.echo(f"API log: {logged} errors logged; exceptions: {dict(errors.most_common(8)) or 'none'}")


def _tenants(base: str, db_url: str, tmp: Path, n: int, secret: str) -> list[dict]:
    """``n`` tenants with a key (written as `synctalk keys create` writes it), a subject and an upload."""
    from gpu_worker.media.audio import write_wav
    from gpu_worker.media.binaries import ffmpeg_exe
    from shared.db.api_keys import generate_key, hash_key
    from shared.db.models import ApiKey, Tenant
    from shared.db.session import make_engine, session_scope
    from shared.settings import Settings

    video, speech = tmp / "v.mp4", tmp / "line.wav"
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
    write_wav(speech, 0.3 * np.sin(np.arange(16000) / 10.0), 16000)
    engine = make_engine(Settings(database_url=db_url))
    made = []
    with session_scope(engine) as s:
        for i in range(n):
            key, prefix = generate_key()
            tenant = Tenant(name=f"load-{i}")
            s.add(tenant)
            s.flush()
            s.add(ApiKey(tenant_id=tenant.id, prefix=prefix, key_hash=hash_key(key, secret)))
            made.append({"key": key})
    engine.dispose()
    for t in made:
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {t['key']}"}, timeout=60) as c:
            with open(video, "rb") as fh:
                r = c.post("/v1/subjects", files={"video": ("v.mp4", fh, "video/mp4")})
            assert r.status_code == 202, r.text
            t["subject"] = r.json()["id"]
            with open(speech, "rb") as fh:
                r = c.post("/v1/uploads/files", files=[("file", ("line.wav", fh, "audio/wav"))])
            assert r.status_code == 201, r.text
            t["upload"] = r.json()["data"][0]["id"]
    return made


async def _run(
    base: str, tenants: list[dict], api_pid: int, db_url: str, clients: int, seconds: float, ramp: float,
    think: float, polls: int, streams: bool, load_before: tuple[float, float, float],
) -> None:  # fmt: skip
    url = httpx.URL(base)
    stats = Stats()
    t0 = time.perf_counter()
    stats.start, end = t0 + ramp, t0 + seconds
    loops, tasks = [], []
    for i in range(clients):
        tenant = tenants[i % len(tenants)]
        delay = ramp * i / clients
        loops.append(asyncio.create_task(client(stats, url, tenant, think, polls, end, delay)))
        if streams:
            tasks.append(asyncio.create_task(stream(stats, url, tenant, end, delay)))
    await asyncio.sleep(max(0.0, stats.start - time.perf_counter()))
    sampler = Sampler(api_pid, db_url, db_url.rsplit("/", 1)[1])
    before = {
        "client": time.process_time(),
        "api": cpu_seconds([api_pid]),
        "pg": postgres_cpu(),
        "redis": cpu_seconds(pids_named("redis-server")),
        "machine": machine_busy(),
    }
    sampler.start()
    measured_from = time.perf_counter()
    await asyncio.sleep(max(0.0, end - time.perf_counter()))
    window = time.perf_counter() - measured_from
    busy, total = machine_busy()
    used = {
        "client": time.process_time() - before["client"],
        "api": cpu_seconds([api_pid]) - before["api"],
        "pg": postgres_cpu() - before["pg"],
        "redis": cpu_seconds(pids_named("redis-server")) - before["redis"],
    }
    machine = (busy - before["machine"][0]) / max(1, total - before["machine"][1]) * 100
    sampler.stop.set()
    # clients send nothing new after `end`: let what is in flight finish (the 60 s client timeout at most),
    # so hanging up on it does not show in the server's log; streams are simply closed
    await asyncio.wait(loops, timeout=65)
    for task in loops + tasks:
        task.cancel()
    await asyncio.gather(*loops, *tasks, return_exceptions=True)
    sampler.join(5)
    _report(stats, window, used, machine, sampler, len(tenants), clients, streams, load_before, db_url)


def _report(stats, window, used, machine, sampler, n_tenants, clients, streams, load_before, db_url) -> None:
    from sqlalchemy import func, select

    from shared.db.models import Render
    from shared.db.session import make_engine, session_scope
    from shared.settings import Settings

    click.echo(f"\nmeasured over {window:.0f} s (after the ramp)\n")
    click.echo(
        f"{'kind':<12} {'answers':>8} {'per s':>7} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}  statuses"
    )
    kinds = ["create", "status", "list", "events", "event lag"]
    total = server_errors = limited = 0
    for kind in kinds:
        lat = stats.latency.get(kind, [])
        statuses = stats.statuses.get(kind, Counter())
        n = sum(statuses.values()) if kind != "event lag" else len(lat)
        if kind != "event lag":
            total += n
            server_errors += sum(v for s, v in statuses.items() if s >= 500)
            limited += statuses.get(429, 0)
        shown = dict(sorted(statuses.items())) if kind != "event lag" else "(queued events seen on streams)"
        click.echo(
            f"{kind:<12} {n:>8} {n / window:>7.1f} {pct(lat, 50):>8.1f} {pct(lat, 95):>8.1f} {pct(lat, 99):>8.1f}"
            f"  {shown}"
        )
    failures = {k: dict(v) for k, v in stats.failures.items() if v}
    click.echo(
        f"\nrequests answered: {total} ({total / window:.1f}/s); server errors (5xx): {server_errors}; "
        f"429: {limited}; client-side failures (timeouts, resets): {failures or 0}; streams ended by the "
        f"server: {stats.drops}"
    )
    engine = make_engine(Settings(database_url=db_url))
    with session_scope(engine) as s:
        renders = s.scalar(select(func.count()).select_from(Render))
    engine.dispose()
    click.echo(f"renders in the database: {renders} (every 202 of the run and the ramp)")
    api_pct = used["api"] / window * 100
    samples = sampler.api_cpu
    click.echo(
        f"CPU (share of one core): API process {api_pct:.0f} % (1 s samples: median {pct(samples, 50):.0f} %, "
        f"max {max(samples, default=0):.0f} %), PostgreSQL {used['pg'] / window * 100:.0f} %, Redis "
        f"{used['redis'] / window * 100:.0f} %, load generator {used['client'] / window * 100:.0f} %; machine "
        f"{machine:.0f} % of {os.cpu_count()} cores"
    )
    click.echo(
        f"database connections of the run: median {pct(sampler.connections, 50):.0f}, max "
        f"{max(sampler.connections, default=0)}; active at once: median {pct(sampler.active, 50):.0f}, max "
        f"{max(sampler.active, default=0)} (the API lets SYNCTALK_API_DB_SESSIONS = 30 requests hold one); "
        f"connections opened: {sampler.sessions_opened} ({sampler.sessions_opened / window:.1f}/s)"
    )
    limits = []
    if pct(samples, 50) >= 80:  # one process, one GIL: about one core at most (measured peaks 90-95 %)
        limits.append(f"the API process's CPU (one process: median {pct(samples, 50):.0f} % of a core)")
    if machine >= 90:
        limits.append(f"the machine's CPU ({machine:.0f} % of all cores, shared with the load generator)")
    if pct(sampler.active, 50) >= 25:
        limits.append("database sessions (requests waiting for one of the 30)")
    if not limits:
        limits.append("nothing saturated: the offered load (clients x think time) is below capacity")
    click.echo("limited by: " + "; ".join(limits))
    click.echo(f"load average after: {' / '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
