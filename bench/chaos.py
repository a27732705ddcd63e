"""Chaos benchmark: renders of one subject on the real stack while random faults land; how much work the
faults cost and how fast the platform recovers from each.

    SYNCTALK_TEST_POSTGRES_URL=postgresql+psycopg2://postgres@127.0.0.1:5432/test \
    python bench/chaos.py [--renders 20] [--faults 100] [--seed 0] [--stale-after 6] \
        [--outage-min 10] [--outage-max 60] [--duration-cap 3600]
    python bench/chaos.py --dry-run --seed 3      # print the fault schedule only

The stack is the fault suite's harness (tests/faults/stack.py): PostgreSQL and moto's S3 behind TCP
proxies, a private redis, the API, the scheduler, a CPU and a GPU worker as processes. The faults (the
catalogue below) land one after another on a schedule drawn from ``--seed``, so two runs of the same
code see the same faults in the same order (not at the same moments of the work: that depends on speed).

Measured, from the database (read directly, never through the proxy) and from moto's request log:

* jobs at the end: renders (and the subject) succeeded, failed, stuck (not finished when the run ends);
* duplicate executions (goal 0): a stage that finished twice, or an output (source, dataset marker,
  model, video, QC) written more than once: work done twice that no fault forced;
* stage runs taken up again (``attempts - 1`` summed, per stage): the runs a killed worker or a lost
  pool process could not finish; they resume (training from its last checkpoint) instead of failing;
* recovery time per fault ("fault to progress again"): from the fault's end until the work it stopped
  moves again: on each queue it stopped (a killed worker's or pool process's queue; every queue with
  work for an outage or a broker restart), a stage running on a process that was not killed writes a
  heartbeat or progress, or a stage finishes. A fault that stopped nothing (an idle worker) gets none;
* and, stricter, until each stage it interrupted ran again (or finished), or each task the broker lost
  was sent again: this one includes the time such a stage waits behind the others in its queue.
A monitor polls the stage rows every 0.5 s (the resolution).

Record figures in docs/BENCHMARKS.md with the machine, the date, the seed and ``uptime``'s load.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "faults"))

from stack import FINISHED, Stack, dump_logs, model_sources, wait_until  # noqa: E402

WORKERS = ("cpu", "gpu")
QUEUED = "@queued"  # a touched stage that was waiting in the broker, not running
POD_DOWN_S = (1.0, 5.0)  # how long a killed worker (or redis) stays down before it is started again


# --- the fault catalogue ------------------------------------------------------------------------------
# Each fault runs to its end (blocking) and returns a line saying what it did. ``seconds`` is the
# fault's length as scheduled: an outage's duration, or how long a killed process stays down.
def kill_cpu_worker(stack: Stack, seconds: float) -> str:
    """A lost CPU machine: the worker's whole process group is SIGKILLed, a new one starts later."""
    return _kill_worker(stack, "cpu", seconds)


def kill_gpu_worker(stack: Stack, seconds: float) -> str:
    """A lost GPU machine (the stage it ran must be taken up again, from its last checkpoint)."""
    return _kill_worker(stack, "gpu", seconds)


def _kill_worker(stack: Stack, name: str, seconds: float) -> str:
    running = _running_stages(stack, name)
    stack.kill(name)
    time.sleep(seconds)
    stack.restart(name)
    return f"{name} down {seconds:.1f} s" + (f", was running {', '.join(running)}" if running else ", idle")


def kill_pool_child(stack: Stack, seconds: float) -> str:
    """One prefork pool process dies (the OOM killer's favourite); Celery's master forks another. The
    child running a stage is preferred (the stage row's ``worker`` ends with its pid): that is where it
    hurts."""
    for name in WORKERS:
        busy = _busy_pids(stack, name)
        children = stack.pool_children(name) if stack.alive(name) else []
        if chosen := [c for c in children if c in busy]:
            stack.kill_pid(chosen[0])
            return f"{name} pool child {chosen[0]} (running a stage)"
    for name in WORKERS:
        if stack.alive(name) and (children := stack.pool_children(name)):
            stack.kill_pid(children[0])
            return f"{name} pool child {children[0]} (idle)"
    return "no pool child to kill"


def restart_redis_empty(stack: Stack, seconds: float) -> str:
    """The broker dies and comes back empty (no persistence): every queued and unacked task is lost."""
    stack.redis_kill()
    time.sleep(seconds)
    stack.redis_restart()
    return f"redis down {seconds:.1f} s, back empty"


def database_outage(stack: Stack, seconds: float) -> str:
    """PostgreSQL unreachable: open connections reset, new ones refused, for ``seconds``."""
    stack.db_proxy.outage(seconds)
    return f"database unreachable {seconds:.1f} s"


def storage_outage(stack: Stack, seconds: float) -> str:
    """S3 unreachable: open connections (uploads, downloads) reset, new ones refused, for ``seconds``."""
    stack.s3_proxy.outage(seconds)
    return f"storage unreachable {seconds:.1f} s"


FAULTS: dict[str, Callable[[Stack, float], str]] = {
    "kill_cpu_worker": kill_cpu_worker,
    "kill_gpu_worker": kill_gpu_worker,
    "kill_pool_child": kill_pool_child,
    "restart_redis_empty": restart_redis_empty,
    "database_outage": database_outage,
    "storage_outage": storage_outage,
}
OUTAGES = ("database_outage", "storage_outage")


def _running_stages(stack: Stack, queue: str) -> list[str]:
    """The stages running on ``queue`` now (each worker here consumes one queue, named after it)."""
    rows = stack.db("SELECT name FROM stages WHERE status = 'running' AND queue = :q", q=queue)
    return [r["name"] for r in rows]


def _busy_pids(stack: Stack, queue: str) -> set[int]:
    """Pids of the processes running a stage of ``queue``, from the rows' ``worker`` (``host:pid``)."""
    rows = stack.db("SELECT worker FROM stages WHERE status = 'running' AND queue = :q", q=queue)
    tails = (str(r["worker"] or "").rsplit(":", 1)[-1] for r in rows)
    return {int(t) for t in tails if t.isdigit()}


# --- the schedule --------------------------------------------------------------------------------------
@dataclass
class Planned:
    """One fault of the schedule: which, how long, and the pause before it (after the previous one)."""

    index: int
    name: str
    seconds: float
    gap_before_s: float


def plan(args: argparse.Namespace) -> list[Planned]:
    """``args.faults`` faults drawn with ``random.Random(args.seed)``: kinds uniformly among
    ``args.kinds``, outage lengths in [outage_min, outage_max], a kill's down time in POD_DOWN_S, pauses
    in [gap_min, gap_max]."""
    rng = random.Random(args.seed)
    schedule = []
    for i in range(args.faults):
        name = rng.choice(args.kinds)
        if name in OUTAGES:
            seconds = rng.uniform(args.outage_min, args.outage_max)
        elif name == "kill_pool_child":
            seconds = 0.0
        else:
            seconds = rng.uniform(*POD_DOWN_S)
        schedule.append(
            Planned(i, name, round(seconds, 1), round(rng.uniform(args.gap_min, args.gap_max), 1))
        )
    return schedule


# --- measurement -----------------------------------------------------------------------------------------
@dataclass
class Landed:
    """A fault as it happened: monotonic start and end, and how long the work took to move again."""

    index: int
    name: str
    detail: str
    started: float
    ended: float
    touched: dict[int, str] = field(default_factory=dict)  # stage id -> the worker it ran on ("" if queued)
    queues: dict[str, set[str]] = field(default_factory=dict)  # queue it stopped -> workers killed there
    recovery_s: float | None = None  # until the work moved again
    every_stage_s: float | None = None  # until each interrupted stage ran again


@dataclass
class ProgressMonitor:
    """Polls every stage row straight from PostgreSQL and keeps, per stage, each change it saw: (when,
    status, worker, progress, heartbeat). Recovery times are read from this history."""

    stack: Stack
    every: float = 0.5
    history: dict[int, list[tuple]] = field(default_factory=dict)
    queue_of: dict[int, str] = field(default_factory=dict)
    errors: int = 0

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="progress-monitor", daemon=True)

    def start(self) -> ProgressMonitor:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self._sample()
            except Exception:  # noqa: BLE001 -- a missed sample costs resolution, not the run
                self.errors += 1

    def _sample(self) -> None:
        rows = self.stack.db("SELECT id, queue, status, worker, progress, heartbeat_at, sent_at FROM stages")
        now = time.monotonic()
        for r in rows:
            self.queue_of[r["id"]] = r["queue"]
            state = (r["status"], r["worker"] or "", r["progress"] or 0.0, r["heartbeat_at"], r["sent_at"])
            seen = self.history.setdefault(r["id"], [])
            if not seen or seen[-1][1:] != state:
                seen.append((now, *state))

    def queue_moved(self, queue: str, after: float, killed: set[str]) -> float | None:
        """When work on ``queue`` moved after ``after``: a stage there, running on a process not in
        ``killed``, wrote a heartbeat or progress, or a stage there finished."""
        first = None
        for stage_id, seen in self.history.items():
            if self.queue_of.get(stage_id) != queue:
                continue
            before = None
            for at, status, worker, progress, beat, _sent in seen:
                if at > after and before is not None:
                    finished = status in FINISHED and before[0] not in FINISHED
                    worked = status == "running" and worker not in killed and (beat, progress) != before[1:]
                    if finished or worked:
                        first = at if first is None else min(first, at)
                        break
                before = (status, beat, progress)
        return first

    def moved_again(self, stage_id: int, after: float, lost_worker: str) -> float | None:
        """When the stage moved after ``after``: finished, or running on another process than
        ``lost_worker`` ("" for an outage: any heartbeat or progress counts; QUEUED for a task the broker
        lost: sent again, or claimed)."""
        sent_before = None
        for at, status, worker, _progress, _beat, sent in self.history.get(stage_id, []):
            if at <= after:
                sent_before = sent
                continue
            if status in FINISHED or (status == "running" and (not lost_worker or worker != lost_worker)):
                return at
            if lost_worker == QUEUED and sent != sent_before:
                return at  # the scheduler sent its task again
        return None


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))  # ceil(n * q / 100)
    return ordered[int(rank) - 1]


def job_counts(stack: Stack, table: str) -> dict[str, int]:
    rows = stack.db(f"SELECT status, count(*) AS n FROM {table} GROUP BY status")
    counts = {r["status"]: r["n"] for r in rows}
    stuck = sum(n for status, n in counts.items() if status not in FINISHED)
    return {"succeeded": counts.get("succeeded", 0), "failed": counts.get("failed", 0), "stuck": stuck}


def taken_up_again(stack: Stack) -> dict[str, int]:
    """Per stage name, the runs beyond the first (``attempts - 1`` summed over its rows)."""
    rows = stack.db(
        "SELECT name, SUM(GREATEST(attempts - 1, 0)) AS repeats FROM stages GROUP BY name ORDER BY name"
    )
    return {r["name"]: int(r["repeats"] or 0) for r in rows}


def duplicate_executions(stack: Stack) -> dict[str, int]:
    """Work done twice: jobs that succeeded twice (their ``*.succeeded`` events), outputs written twice."""
    twice = stack.db(
        "SELECT count(*) AS n FROM (SELECT resource_id FROM events WHERE type LIKE '%.succeeded' "
        "GROUP BY resource_id HAVING count(*) > 1) AS t"
    )[0]["n"]
    outputs = [k for k in stack.list_keys("tenants/") if _published_once(k)]
    written_twice = sum(1 for k in outputs if stack.object_versions(k) > 1)
    return {
        "jobs_finished_twice": int(twice),
        "outputs_written_twice": written_twice,
        "outputs": len(outputs),
    }


def _published_once(key: str) -> bool:
    """The outputs a stage writes once (not checkpoints or curves, published as training goes)."""
    name = key.rsplit("/", 1)[-1]
    return (
        name.startswith("source.") or name in ("video.mp4", "qc.json", "model.pt", "config.json")
        or key.endswith("dataset/.complete")
    )  # fmt: skip


def failure_codes(stack: Stack) -> dict[str, int]:
    rows = stack.db(
        "SELECT error_code, count(*) AS n FROM renders WHERE status = 'failed' GROUP BY error_code"
    )
    return {r["error_code"] or "?": r["n"] for r in rows}


def attach_recoveries(landed: list[Landed], monitor: ProgressMonitor) -> None:
    """A fault's recovery (its queues moving again) and its stricter twin (each touched stage again)."""
    for fault in landed:
        if fault.queues:
            times = [monitor.queue_moved(q, fault.ended, killed) for q, killed in fault.queues.items()]
            if all(t is not None for t in times):
                fault.recovery_s = round(max(times) - fault.ended, 2)
        if fault.touched:
            times = [monitor.moved_again(sid, fault.ended, worker) for sid, worker in fault.touched.items()]
            if all(t is not None for t in times):
                fault.every_stage_s = round(max(times) - fault.ended, 2)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def report(landed: list[Landed], stack: Stack, elapsed_s: float) -> dict:
    """Print the tables and return the same figures as a dict (for --json)."""
    renders, subjects = job_counts(stack, "renders"), job_counts(stack, "subjects")
    repeats = taken_up_again(stack)
    duplicates = duplicate_executions(stack)
    print(f"\nrun: {elapsed_s / 60:.1f} min, {len(landed)} faults")
    print(f"renders:  {renders}   failed by code: {failure_codes(stack)}")
    print(f"subjects: {subjects}")
    print(f"duplicate executions: {duplicates}")
    print(f"stage runs taken up again after a fault: {sum(repeats.values())}  {repeats}")
    print("\nrecovery: work moving again | each interrupted stage running again (queue wait included)")
    print(
        f"{'fault':<22}{'n':>4}{'moved':>7}{'p50 s':>8}{'p95 s':>8}{'max s':>8}{'each':>7}{'p50 s':>8}{'p95 s':>8}"
    )
    by_kind: dict[str, list[Landed]] = {}
    for fault in landed:
        by_kind.setdefault(fault.name, []).append(fault)
    rows = {}
    for name, faults in [*sorted(by_kind.items()), ("all", landed)]:
        moved = [f.recovery_s for f in faults if f.recovery_s is not None]
        each = [f.every_stage_s for f in faults if f.every_stage_s is not None]
        rows[name] = {"n": len(faults), "recovered": len(moved), "p50_s": percentile(moved, 50),
                      "p95_s": percentile(moved, 95), "max_s": max(moved) if moved else None,
                      "each_n": len(each), "each_p50_s": percentile(each, 50), "each_p95_s": percentile(each, 95)}  # fmt: skip
        r = rows[name]
        print(
            f"{name:<22}{r['n']:>4}{r['recovered']:>7}{_fmt(r['p50_s']):>8}{_fmt(r['p95_s']):>8}{_fmt(r['max_s']):>8}"
            f"{r['each_n']:>7}{_fmt(r['each_p50_s']):>8}{_fmt(r['each_p95_s']):>8}"
        )
    return {"renders": renders, "subjects": subjects, "duplicates": duplicates, "taken_up_again": repeats,
            "recovery": rows,
            "faults": [asdict(f) for f in landed], "elapsed_s": round(elapsed_s, 1)}  # fmt: skip


# --- the scenario ------------------------------------------------------------------------------------------
def make_clip(root: Path):
    """The tests' sample clip (6 s, 256 px, seed 0): a subject video and its speech."""
    from gpu_worker.sample import make_sample
    from shared.settings import Settings

    settings = Settings(  # as tests/conftest.py's isolated_settings: model files from local sources only
        environment="test", data_dir=root / "data", model_dir=root / "models", model_sources=model_sources(),
        model_download=False,
    )  # fmt: skip
    return make_sample(root / "clip", seconds=6.0, size=256, seed=0, settings=settings)


def start_platform(stack: Stack) -> None:
    """API, scheduler and a worker per queue, each waited for."""
    from services.cli.main import COMMANDS

    stack.start_api()
    if "scheduler" in COMMANDS:
        stack.start_scheduler()
    else:  # TODO(lead): drop this branch once `synctalk scheduler` exists
        print("warning: no `synctalk scheduler` command yet: running without it", file=sys.stderr)
    for queue in WORKERS:
        stack.start_worker(queue)
    for queue in WORKERS:
        stack.wait_log(queue, "ready.", timeout=120)


def long_speech(speech: Path, seconds: float, out: Path) -> Path:
    """The clip's speech repeated to ``seconds``: renders long enough for faults to land on them."""
    import wave

    with wave.open(str(speech), "rb") as src:
        params, frames = src.getparams(), src.readframes(src.getnframes())
    per_second = params.framerate * params.sampwidth * params.nchannels
    want = (
        int(seconds * per_second)
        // (params.sampwidth * params.nchannels)
        * params.sampwidth
        * params.nchannels
    )
    data = (frames * (want // max(1, len(frames)) + 1))[:want]
    with wave.open(str(out), "wb") as dst:
        dst.setparams(params)
        dst.writeframes(data)
    return out


def submit(stack: Stack, clip, renders: int, speech: Path) -> tuple[str, list[str]]:
    """The subject (its video) and ``renders`` renders of its speech, submitted at once: the renders
    wait for the subject's training."""
    with open(clip.video, "rb") as fh:
        r = stack.client.post(
            "/v1/subjects", files={"video": ("ann.mp4", fh, "video/mp4")}, data={"name": "Ann"}
        )
    r.raise_for_status()
    subject = r.json()["id"]
    ids = []
    for i in range(renders):
        with open(speech, "rb") as fh:
            r = stack.client.post(
                f"/v1/subjects/{subject}/renders", files={"audio": ("line.wav", fh, "audio/wav")},
                data={"ref": f"line-{i}"},
            )  # fmt: skip
        r.raise_for_status()
        ids.append(r.json()["id"])
    return subject, ids


def unfinished(stack: Stack) -> int:
    rows = stack.db(
        "SELECT (SELECT count(*) FROM renders WHERE status NOT IN ('succeeded', 'failed', 'canceled'))"
        " + (SELECT count(*) FROM subjects WHERE status NOT IN ('succeeded', 'failed', 'canceled')) AS n"
    )
    return int(rows[0]["n"])


def inject(stack: Stack, schedule: list[Planned], deadline: float) -> list[Landed]:
    """Land the faults in order until the schedule, the time or the work runs out."""
    landed = []
    for planned in schedule:
        time.sleep(planned.gap_before_s)
        if time.monotonic() > deadline or unfinished(stack) == 0:
            break
        started = time.monotonic()
        before = stack.db(
            "SELECT id, status, queue, worker, ready_at FROM stages WHERE status IN ('queued', 'running')"
        )
        detail = FAULTS[planned.name](stack, planned.seconds)
        fault = Landed(planned.index, planned.name, detail, started, time.monotonic())
        fault.touched = touched_by(planned.name, detail, before)
        fault.queues = stopped_queues(planned.name, before, fault.touched)
        landed.append(fault)
        print(f"[{planned.index + 1:>3}/{len(schedule)}] {planned.name:<20} {detail}", flush=True)
    return landed


def stopped_queues(name: str, before: list[dict], touched: dict[int, str]) -> dict[str, set[str]]:
    """The queues whose work a fault stopped, each with the workers it killed there."""
    queue_of = {r["id"]: r["queue"] for r in before}
    if name in ("kill_cpu_worker", "kill_gpu_worker", "kill_pool_child"):
        stopped: dict[str, set[str]] = {}
        for stage_id, worker in touched.items():
            stopped.setdefault(queue_of[stage_id], set()).add(worker)
        return stopped
    return {r["queue"]: set() for r in before if r["status"] == "running" or r["ready_at"] is not None}


def touched_by(name: str, detail: str, before: list[dict]) -> dict[int, str]:
    """The stages a fault hit (stage id -> the worker that ran it, "" when any sign of work counts)."""
    running = [r for r in before if r["status"] == "running"]
    if name in ("kill_cpu_worker", "kill_gpu_worker"):
        queue = name.split("_")[1]
        return {r["id"]: r["worker"] or "" for r in running if r["queue"] == queue}
    if name == "kill_pool_child":
        pid = detail.split("pool child ", 1)[1].split(" ", 1)[0] if "pool child " in detail else None
        return {r["id"]: r["worker"] for r in running if pid and str(r["worker"] or "").endswith(f":{pid}")}
    touched = {r["id"]: "" for r in running}
    if name == "restart_redis_empty":  # the due, unclaimed stages whose tasks were in the broker
        touched.update(
            {r["id"]: QUEUED for r in before if r["status"] == "queued" and r["ready_at"] is not None}
        )
    return touched


def heal(stack: Stack) -> None:
    """Whatever state the last fault left: links up, redis up, every worker running."""
    stack.db_proxy.restore()
    stack.s3_proxy.restore()
    if stack.redis.proc is None or stack.redis.proc.poll() is not None:
        stack.redis_restart()
    for name in WORKERS:
        if not stack.alive(name):
            stack.restart(name)


def run(args: argparse.Namespace) -> dict:
    root = Path(args.workdir or tempfile.mkdtemp(prefix="synctalk-chaos-"))
    schedule = plan(args)
    settings = {"job_stale_after_s": args.stale_after, **dict(s.split("=", 1) for s in args.setting)}
    if args.max_attempts:
        settings["job_max_attempts"] = args.max_attempts
    clip = make_clip(root)
    stack = Stack(root / "stack", **settings)
    started = time.monotonic()
    try:
        stack.up()
        start_platform(stack)
        speech = long_speech(clip.speech, args.speech_seconds, root / "line.wav")
        subject, _renders = submit(stack, clip, args.renders, speech)
        if args.train_first:  # faults land on the renders only; the subject trains undisturbed
            stack.wait_for(f"/v1/subjects/{subject}", timeout=args.duration_cap)
        monitor = ProgressMonitor(stack).start()
        landed = inject(stack, schedule, deadline=started + args.duration_cap)
        heal(stack)
        settle_until = min(time.monotonic() + args.settle, started + args.duration_cap + args.settle)
        remaining = max(1.0, settle_until - time.monotonic())
        try:
            wait_until(lambda: unfinished(stack) == 0, remaining, every=2, what="every job finished")
        except TimeoutError:
            print(f"{unfinished(stack)} jobs still unfinished after the settle time", file=sys.stderr)
        monitor.stop()
        attach_recoveries(landed, monitor)
        return report(landed, stack, time.monotonic() - started)
    except BaseException:
        dump_logs(stack)
        raise
    finally:
        stack.stop_all()
        print(f"logs: {stack.logs}", file=sys.stderr)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("--renders", type=int, default=20, help="renders of the subject submitted (default 20)")
    p.add_argument("--faults", type=int, default=100, help="faults in the schedule (default 100)")
    p.add_argument(
        "--speech-seconds", type=float, default=20.0, help="length of each render's speech, s (default 20)"
    )
    p.add_argument("--seed", type=int, default=0, help="the schedule's random seed (default 0)")
    p.add_argument("--stale-after", type=float, default=6.0, help="SYNCTALK_JOB_STALE_AFTER_S (default 6)")
    p.add_argument(
        "--max-attempts", type=int, default=None, help="SYNCTALK_JOB_MAX_ATTEMPTS (default: the platform's)"
    )
    p.add_argument(
        "--outage-min", type=float, default=10.0, help="shortest database/storage outage, s (default 10)"
    )
    p.add_argument(
        "--outage-max", type=float, default=60.0, help="longest database/storage outage, s (default 60)"
    )
    p.add_argument("--gap-min", type=float, default=5.0, help="shortest pause between faults, s (default 5)")
    p.add_argument("--gap-max", type=float, default=20.0, help="longest pause between faults, s (default 20)")
    p.add_argument(
        "--duration-cap", type=float, default=3600.0, help="no fault starts after this, s (default 3600)"
    )
    p.add_argument(
        "--settle", type=float, default=300.0, help="then wait this long for jobs to finish, s (default 300)"
    )
    p.add_argument(
        "--kinds",
        default=",".join(FAULTS),
        help=f"comma list of faults to draw from (default: all)\n{', '.join(FAULTS)}",
    )
    p.add_argument(
        "--no-train-first", dest="train_first", action="store_false", help="let faults hit training too"
    )
    p.add_argument(
        "--setting",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="any SYNCTALK_ setting, lower case",
    )
    p.add_argument(
        "--workdir", default=None, help="where the clip, logs and data go (default: a new temp dir)"
    )
    p.add_argument("--json", default=None, metavar="PATH", help="also write the figures as JSON")
    p.add_argument("--dry-run", action="store_true", help="print the schedule and exit")
    args = p.parse_args(argv)
    args.kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = [k for k in args.kinds if k not in FAULTS]
    if unknown or not args.kinds:
        p.error(f"unknown faults {unknown}; known: {', '.join(FAULTS)}")
    if not 0 < args.outage_min <= args.outage_max:
        p.error("need 0 < --outage-min <= --outage-max")
    if not 0 <= args.gap_min <= args.gap_max:
        p.error("need 0 <= --gap-min <= --gap-max")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.dry_run:
        for p in plan(args):
            print(f"{p.index + 1:>3}  +{p.gap_before_s:>5.1f} s  {p.name:<20} {p.seconds:>5.1f} s")
        return 0
    figures = run(args)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2, default=str))
    return 0 if figures["renders"]["stuck"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
