"""What one subject and one render cost the machines: per stage, wall seconds, CPU seconds (the worker
process and its children: the pool process, ffmpeg) and peak memory (RSS of the worker's whole process
tree); storage per subject (source, dataset, model, checkpoint) and per render minute. The input for
docs/SCALING.md.

    python bench/footprint.py [--profile preview] [--seconds 20] [--size 256] [--render-seconds 10]

The platform runs as real processes on the embedded default in a scratch folder (the scheduler, one
cpu worker, one gpu worker, the API), each worker with concurrency 1 so that the stage a worker runs at
any moment is known from the database; /proc is sampled every 0.2 s. CPU seconds are the workers' own
(user + system, children that exited included); the API and the scheduler are measured apart.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def _tree(pid: int) -> list[int]:
    """``pid`` and every process below it."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as fh:
                    todo.extend(int(c) for c in fh.read().split())
        except OSError:
            continue
    return found


def _cpu_and_rss(pid: int) -> tuple[float, int]:
    """CPU seconds of the tree (each process's own and its reaped children's) and its RSS in bytes."""
    cpu, rss = 0.0, 0
    for p in _tree(pid):
        try:
            with open(f"/proc/{p}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            cpu += sum(int(x) for x in fields[11:15]) / TICKS  # utime stime cutime cstime
            with open(f"/proc/{p}/statm") as fh:
                rss += int(fh.read().split()[1]) * PAGE
        except OSError:
            continue
    return cpu, rss


class Sampler:
    """Attributes each worker's CPU and memory to the stage its queue is running."""

    def __init__(self, workers: dict[str, subprocess.Popen], engine) -> None:
        self.workers, self.engine = workers, engine
        self.cpu = defaultdict(float)
        self.peak = defaultdict(int)
        self.last = {q: _cpu_and_rss(p.pid)[0] for q, p in workers.items()}

    def running(self) -> dict[str, str]:
        from sqlalchemy import text

        with self.engine.connect() as conn:
            rows = conn.execute(text("SELECT queue, name, job_id FROM stages WHERE status = 'running'")).all()
        return {queue: f"{name}" for queue, name, _ in rows}

    def sample(self) -> None:
        now = self.running()
        for queue, proc in self.workers.items():
            cpu, rss = _cpu_and_rss(proc.pid)
            stage = now.get(queue, f"{queue} idle")
            self.cpu[stage] += cpu - self.last[queue]
            self.peak[stage] = max(self.peak[stage], rss)
            self.last[queue] = cpu


def _storage_bytes(root: Path) -> dict[str, int]:
    """Bytes stored, by kind of object."""
    sizes: dict[str, int] = defaultdict(int)
    for path in root.rglob("*"):
        if not path.is_file():
            continue
        rel = path.relative_to(root).as_posix()
        parts = rel.split("/")
        if len(parts) > 3 and parts[2] == "subjects":
            sizes[f"subject {parts[4] if len(parts) > 5 else parts[4].split('.')[0]}"] += path.stat().st_size
        elif len(parts) > 3 and parts[2] == "renders":
            sizes[f"render {parts[-1]}"] += path.stat().st_size
        elif len(parts) > 2 and parts[2] == "uploads":
            sizes["uploads"] += path.stat().st_size
    return dict(sizes)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="preview")
    ap.add_argument("--seconds", type=float, default=20.0, help="the subject clip's length")
    ap.add_argument("--size", type=int, default=256, help="the sample clips' frame size")
    ap.add_argument("--render-seconds", type=float, default=10.0, help="the speech track's length")
    ap.add_argument("--steps-scale", type=float, default=1.0, help="SYNCTALK_TRAIN_STEPS_SCALE")
    ap.add_argument("--out", type=Path, default=None, help="keep the scratch folder here")
    args = ap.parse_args()

    from sqlalchemy import create_engine

    from gpu_worker.sample import make_sample
    from shared.settings import get_settings

    root = args.out or Path(tempfile.mkdtemp(prefix="synctalk-footprint-"))
    root.mkdir(parents=True, exist_ok=True)
    clip, speech = root / "sample", root / "speech"
    if not (clip / "truth.json").exists():
        make_sample(clip, seconds=args.seconds, size=args.size, seed=0, settings=get_settings())
    if not (speech / "truth.json").exists():
        make_sample(speech, seconds=args.render_seconds, size=args.size, seed=1, settings=get_settings())
    port = _free_port()
    data = root / "platform"
    env = {
        **os.environ, "SYNCTALK_DATA_DIR": str(data), "SYNCTALK_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "SYNCTALK_TRAIN_STEPS_SCALE": str(args.steps_scale), "SYNCTALK_SCHEDULER_METRICS_PORT": "0",
        "PYTHONUNBUFFERED": "1",
    }  # fmt: skip
    exe = [sys.executable, "-m", "services.cli.main"]
    subprocess.run([*exe, "migrate"], env=env, check=True, capture_output=True)
    key = subprocess.run([*exe, "keys", "create", "--tenant", "bench"], env=env, check=True, capture_output=True,
                         text=True).stdout.strip().splitlines()[-1]  # fmt: skip
    logs = open(root / "platform.log", "ab")  # noqa: SIM115 -- closed in finally
    spawn = lambda *a: subprocess.Popen([*exe, *a], env=env, stdout=logs, stderr=subprocess.STDOUT)  # noqa: E731
    procs = {
        "cpu": spawn("worker", "--queues", "cpu", "--name", "cpu@bench"),
        "gpu": spawn("worker", "--queues", "gpu", "--name", "gpu@bench"),
        "scheduler": spawn("scheduler"),
        "api": spawn("api", "--port", str(port)),
    }
    engine = create_engine(f"sqlite:///{data / 'synctalk.db'}")
    try:
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {key}"},
                              timeout=300, trust_env=False)  # fmt: skip
        _wait(lambda: client.get("/readyz").status_code == 200, 180)
        sampler = Sampler({q: procs[q] for q in ("cpu", "gpu")}, engine)
        service_cpu0 = {n: _cpu_and_rss(procs[n].pid)[0] for n in ("api", "scheduler")}
        started = time.time()
        with open(clip / "subject.mp4", "rb") as fh:
            r = client.post("/v1/subjects", files={"video": ("subject.mp4", fh, "video/mp4")},
                            data={"name": "bench", "profile": args.profile})  # fmt: skip
        if r.status_code != 202:
            raise SystemExit(f"the subject was refused: {r.text}")
        subject_id = r.json()["id"]
        _follow(client, sampler, f"/v1/subjects/{subject_id}")
        with open(speech / "speech.wav", "rb") as fh:
            r = client.post(
                f"/v1/subjects/{subject_id}/renders", files={"audio": ("speech.wav", fh, "audio/wav")}
            )
        r.raise_for_status()
        render = _follow(client, sampler, f"/v1/renders/{r.json()['id']}")
        stages = _stage_walls(engine)
        services = {n: _cpu_and_rss(procs[n].pid)[0] - service_cpu0[n] for n in ("api", "scheduler")}
        report = {
            "profile": args.profile,
            "clip_s": args.seconds,
            "size": args.size,
            "speech_s": args.render_seconds,
            "steps_scale": args.steps_scale,
            "load_before": os.getloadavg(),
            "wall_s": time.time() - started,
            "render": {k: render.get(k) for k in ("status", "duration_s", "video_url")},
            "stages": {
                name: {
                    "wall_s": wall,
                    "cpu_s": sampler.cpu.get(name, 0.0),
                    "peak_rss_mb": sampler.peak.get(name, 0) / 2**20,
                }
                for name, wall in stages.items()
            },  # fmt: skip
            "idle_workers_cpu_s": {k: v for k, v in sampler.cpu.items() if k.endswith("idle")},
            "api_cpu_s": services["api"],
            "scheduler_cpu_s": services["scheduler"],
            "storage_bytes": _storage_bytes(data / "storage"),
        }
        print(json.dumps(report, indent=2, default=str))
    finally:
        for p in procs.values():
            p.terminate()
        for p in procs.values():
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        logs.close()


def _stage_walls(engine) -> dict[str, float]:
    from sqlalchemy import text

    with engine.connect() as conn:
        rows = conn.execute(text(
            "SELECT name, (julianday(finished_at) - julianday(started_at)) * 86400 FROM stages "
            "WHERE status = 'succeeded' ORDER BY position"
        )).all()  # fmt: skip
    return {name: float(s) for name, s in rows}


def _follow(client: httpx.Client, sampler: Sampler, path: str) -> dict:
    while True:
        sampler.sample()
        doc = client.get(path).json()
        if doc["status"] in ("succeeded", "failed", "canceled"):
            if doc["status"] != "succeeded":
                raise SystemExit(f"{path} ended {doc['status']}: {doc.get('error')}")
            return doc
        time.sleep(0.2)


def _wait(predicate, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit("the platform did not become ready")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    main()
