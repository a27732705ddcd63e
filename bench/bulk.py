"""Bulk submission with the client (``synctalk remote dub --no-wait``) against the real stack.

    SYNCTALK_TEST_POSTGRES_URL=postgresql+psycopg2://postgres@127.0.0.1:5432/test \
    SYNCTALK_TEST_REDIS_URL=redis://127.0.0.1:6379/15 python bench/bulk.py [--sizes 1000,10000] [--distinct 100]

Starts moto's S3 server and one API process (uvicorn, no workers: nothing is rendered; queued tasks are
purged afterwards) on a scratch Postgres database, a tenant and a subject. For each manifest size: a CSV
of that many short speech tracks (``--distinct`` different contents, each row its own ref), submitted by
the CLI in a child process; prints the wall time to submit everything (manifest checked, distinct files
uploaded once each with presigned PUTs, batches of 1000) and that process's peak RSS, and checks the
server holds exactly one render per row. Record figures in docs/BENCHMARKS.md with `uptime`'s load.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click
import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "platform"))

# the CLI in a child process that reports its own peak memory when it ends
CHILD = """
import resource, sys, time
from services.cli.main import cli
t0 = time.perf_counter()
try:
    cli(sys.argv[1:], standalone_mode=False)
finally:
    print("BENCH", time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
"""


def _tracks(folder: Path, distinct: int, salt: int = 0) -> list[Path]:
    """``distinct`` 0.5 s 16-bit WAVs, each a different tone (``salt`` keeps two sets apart)."""
    import wave

    folder.mkdir(parents=True, exist_ok=True)
    t = np.arange(8000) / 16000  # 0.5 s
    paths = []
    for i in range(distinct):
        pcm = (0.3 * np.sin(2 * np.pi * (110 + 0.01 * i + salt) * t) * 32767).astype("<i2")
        path = folder / f"t{i:05d}.wav"
        with wave.open(str(path), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(16000)
            w.writeframes(pcm.tobytes())
        paths.append(path)
    return paths


def _manifest(path: Path, files: list[Path], n: int, prefix: str) -> Path:
    with open(path, "w") as fh:
        fh.write("audio,ref\n")
        for i in range(n):
            fh.write(f"{files[i % len(files)]},{prefix}-{i:06d}\n")
    return path


@click.command()
@click.option("--sizes", default="1000,10000", show_default=True, help="Manifest lengths to run.")
@click.option(
    "--distinct", default=100, show_default=True,
    help="Different track contents in a manifest; 0: every row its own file (made for that manifest).",
)  # fmt: skip
@click.option("--concurrency", default=16, show_default=True)
@click.option("--inline/--no-inline", default=True, show_default=True,
              help="Short tracks sent in the upload calls (else a presigned PUT each).")  # fmt: skip
def main(sizes: str, distinct: int, concurrency: int, inline: bool) -> None:
    import redis
    from platform_helpers import MotoS3, free_port, platform_env, postgres_database, synctalk

    pg, rd = os.environ["SYNCTALK_TEST_POSTGRES_URL"], os.environ["SYNCTALK_TEST_REDIS_URL"]
    click.echo(
        f"load: {' '.join(f'{x:.2f}' for x in os.getloadavg())} (1/5/15 min) on {os.cpu_count()} cores"
    )
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
                 "--log-level", "warning"], env=env, cwd=ROOT,
            )  # fmt: skip
            base = f"http://127.0.0.1:{port}"
            while True:
                try:
                    if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.3)
            _run(base, key, tmp, [int(s) for s in sizes.split(",")], distinct, concurrency, inline)
        finally:
            if api is not None:
                api.terminate()
                api.wait(10)
            redis.Redis.from_url(rd).delete("cpu", "gpu")
            s3.stop()
            drop()


def _run(
    base: str, key: str, tmp: Path, sizes: list[int], distinct: int, concurrency: int, inline: bool
) -> None:
    from services.client import Client

    sys.path.insert(0, str(ROOT / "tests" / "client"))
    from client_helpers import tiny_video

    with Client(base, key) as c:
        subject = c.upload_subject(tiny_video(tmp / "person.mp4"), name="bench")["id"]
    shared = _tracks(tmp / "tracks", distinct) if distinct else None
    client_env = {k: v for k, v in os.environ.items() if not k.startswith("SYNCTALK_")}
    client_env.update(SYNCTALK_API_URL=base, SYNCTALK_API_KEY=key)
    results = []
    for n in sizes:
        files = shared or _tracks(tmp / f"tracks{n}", n, salt=n)
        manifest = _manifest(tmp / f"m{n}.csv", files, n, f"n{n}")
        out = tmp / f"out{n}"
        run = subprocess.run(
            [sys.executable, "-c", CHILD, "remote", "dub", subject, str(manifest), "--out", str(out), "--no-wait",
             "--concurrency", str(concurrency), "--inline" if inline else "--no-inline"], env=client_env, cwd=ROOT, capture_output=True, text=True,
        )  # fmt: skip
        line = [ln for ln in run.stderr.splitlines() if ln.startswith("BENCH")]
        if run.returncode != 0 or not line:
            raise SystemExit(f"dub of {n} failed:\n{run.stderr[-3000:]}")
        seconds, maxrss_kb = float(line[-1].split()[1]), int(line[-1].split()[2])
        with Client(base, key) as c:
            made = sum(
                1 for r in c.iter_renders(subject_id=subject) if (r.get("ref") or "").startswith(f"n{n}-")
            )
        results.append({"tracks": n, "distinct_files": len(files), "inline": inline, "submit_s": round(seconds, 1),
                        "tracks_per_s": round(n / seconds), "peak_rss_mb": round(maxrss_kb / 1024, 1),
                        "renders_on_server": made})  # fmt: skip
        click.echo(json.dumps(results[-1]))
        assert made == n, f"{made} renders for {n} rows"
    click.echo(f"load after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
