"""The real platform as separate OS processes, wired so that a test can break any link on purpose.

A ``Stack`` owns, for one test (or one benchmark run):

* a throw-away PostgreSQL database on the test server, reached by the platform THROUGH a ``TcpProxy``
  (``stack.db_proxy``), while the test's own assertions (``db()``, ``stages()``) go straight to it;
* its own ``redis-server`` on a free port, no persistence, reached directly (``redis_kill()``,
  ``redis_restart()``: a fresh, empty server on the same port, which is what a broker restart without
  persistence looks like);
* moto's S3 server, reached THROUGH a ``TcpProxy`` (``stack.s3_proxy``), so that a test
  can count how many times an object was written (``object_versions()``, from moto's request log: a
  versioned bucket would keep every checkpoint a training run publishes in moto's memory);
* the platform's processes (``python -m services.cli.main ...``), each in its own process group with its
  output appended to ``<root>/logs/<name>.log``: ``start()``, ``kill()`` (SIGKILL to the group: a lost
  machine), ``term()`` (SIGTERM to the main process only: what Kubernetes sends), ``restart()``, ...

Nothing here is mocked: the processes, sockets, servers and the database are real. ``stop_all()``
always cleans everything up; ``tests/faults/conftest.py`` calls it from a finalizer, and bench/chaos.py
from a ``finally``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO / "tests" / "platform"))  # platform_helpers: one way to build the env, moto, a db

from platform_helpers import MotoS3, free_port, platform_env, postgres_database  # noqa: E402
from tcp_proxy import TcpProxy  # noqa: E402

# Short timings, so that faults are noticed and recovered from in seconds rather than minutes; any of
# them can be overridden per stack (``Stack(root, job_stale_after_s="10")``).
DEFAULT_SETTINGS: dict[str, str] = {
    "job_heartbeat_s": "1",
    "job_stale_after_s": "6",
    "job_resend_after_s": "5",
    "transient_retry_s": "60",
    "scheduler_every_s": "1",
    "webhook_allow_private": "true",
    "rate_limit_per_minute": "1000000",
    "rate_limit_ip_per_minute": "1000000",
}
STAGE_COLUMNS = (
    "id", "position", "name", "queue", "status", "attempts", "progress", "message", "lease", "worker",
    "task_id", "ready_at", "sent_at", "heartbeat_at", "started_at", "finished_at",
)  # fmt: skip
FINISHED = ("succeeded", "failed", "canceled")


class ServiceMissing(RuntimeError):
    """A server the stack needs (PostgreSQL, redis-server, moto_server) is not available here."""


def postgres_server_url() -> str:
    """The test PostgreSQL server (``SYNCTALK_TEST_POSTGRES_URL``, any database on it)."""
    url = os.environ.get("SYNCTALK_TEST_POSTGRES_URL")
    if not url:
        raise ServiceMissing("SYNCTALK_TEST_POSTGRES_URL is not set (.ci/run sets it)")
    return url


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if not found:
        raise ServiceMissing("redis-server is not installed")
    return found


def model_sources() -> str:
    """Local folders the workers copy model files from, as tests/conftest.py computes them (the bench
    does not load that conftest)."""
    if os.environ.get("SYNCTALK_MODEL_SOURCES"):
        return os.environ["SYNCTALK_MODEL_SOURCES"]
    from shared.settings import Settings

    shared = REPO.parent / "shared" / "models"
    folders = [str(shared)] if shared.is_dir() else []
    return os.pathsep.join([*folders, str(Settings().model_dir)])


def wait_until(predicate: Callable[[], Any], timeout: float, every: float = 0.2, what: str = "") -> Any:
    """Poll ``predicate`` until it returns something truthy, and return that; TimeoutError after
    ``timeout`` seconds. Exceptions from the predicate count as "not yet" (a fault may be in progress)."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 -- retried until the deadline, reported then
            last_error = exc
        if time.monotonic() > deadline:
            detail = f" (last error: {type(last_error).__name__}: {last_error})" if last_error else ""
            raise TimeoutError(f"not true after {timeout:g} s: {what or predicate}{detail}")
        time.sleep(every)


def _tail(path: Path, lines: int) -> str:
    if not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _children_of(pid: int) -> list[int]:
    """Pids whose parent is ``pid``, from /proc/<pid>/stat (the 4th field, after the ``(comm)``)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(entry.name))
    return sorted(found)


# --- redis ----------------------------------------------------------------------------------------------
class RedisServer:
    """A private ``redis-server`` without persistence: a restart brings it back empty, on the same port."""

    def __init__(self, root: Path, port: int | None = None) -> None:
        self.root = root
        self.port = port or free_port()
        self.log = root / "redis.log"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", str(self.root), "--protected-mode", "no"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        wait_until(self.ping, timeout, every=0.05, what=f"redis-server on :{self.port} answers PING")

    def ping(self) -> bool:
        import redis

        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError(f"redis-server exited (see {self.log})")
        client = redis.Redis(port=self.port, socket_timeout=1, socket_connect_timeout=1)
        try:
            return bool(client.ping())
        finally:
            client.close()

    def kill(self) -> None:
        """SIGKILL: everything it held (queued tasks, unacked ones) is gone."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def restart(self) -> None:
        self.kill()
        self.start()

    stop = kill


# --- platform processes ---------------------------------------------------------------------------------
@dataclass
class Proc:
    """One platform process: its command line (to restart it), its process and its log."""

    name: str
    args: tuple[str, ...]
    log: Path
    popen: subprocess.Popen
    log_offset: int = 0  # where this run's output starts in the log (restarts append)
    ready: Callable[[], None] | None = None  # waits until the process serves (the API), run on restart
    runs: int = 1
    env: dict[str, str] | None = None  # this process's own additions to the stack's environment

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None


class Stack:
    """The platform on PostgreSQL (through a proxy), Redis and moto's S3 (through a proxy), as processes.

    ``Stack(root, **settings)`` only plans; ``up()`` starts the servers, creates the database, runs the
    migration and makes an API key; ``start_api()`` and ``start_worker()`` / ``start_scheduler()`` start
    the platform's processes. ``settings`` are SYNCTALK_ settings in lower case (``job_stale_after_s=4``)
    on top of ``DEFAULT_SETTINGS``; values are passed as str().
    """

    def __init__(
        self,
        root: Path,
        *,
        postgres_url: str | None = None,
        bucket: str = "synctalk-faults",
        tenant: str = "faults",
        **settings: Any,
    ) -> None:
        self.root = Path(root)
        self.postgres_url = postgres_url or postgres_server_url()
        self.bucket = bucket
        self.tenant = tenant
        self.settings = {k.lower(): str(v) for k, v in settings.items()}
        self.api_port = free_port()
        self.logs = self.root / "logs"
        self.procs: dict[str, Proc] = {}
        self.db_proxy: TcpProxy | None = None
        self.s3_proxy: TcpProxy | None = None
        self.redis: RedisServer | None = None
        self.moto: MotoS3 | None = None
        self.key: str | None = None
        self.db_url: str | None = None  # the database itself (tests, migrate)
        self.proxied_db_url: str | None = None  # the database through db_proxy (the platform)
        self._drop_db: Callable[[], None] | None = None
        self._engine = None
        self._s3 = None
        self._client: httpx.Client | None = None

    # --- bring-up -----------------------------------------------------------------------------------------
    def up(self) -> Stack:
        """Database, proxies, Redis, moto and its bucket, the migration and an API key."""
        from sqlalchemy.engine import make_url

        self.logs.mkdir(parents=True, exist_ok=True)
        self.db_url, self._drop_db = postgres_database(self.postgres_url)
        direct = make_url(self.db_url)
        self.db_proxy = TcpProxy(direct.host or "127.0.0.1", direct.port or 5432, name="postgres").start()
        self.proxied_db_url = direct.set(host="127.0.0.1", port=self.db_proxy.port).render_as_string(
            hide_password=False
        )
        self.redis = RedisServer(self.root / "redis")
        self.redis.start()
        self.moto = MotoS3(self.logs / "moto.log")
        moto_port = int(self.moto.url.rsplit(":", 1)[1])
        self.s3_proxy = TcpProxy("127.0.0.1", moto_port, name="s3").start()
        self.s3.create_bucket(Bucket=self.bucket)
        self.run("migrate", env=self.env(direct_db=True))
        self.key = self.create_key(self.tenant)
        return self

    def env(self, *, direct_db: bool = False) -> dict[str, str]:
        """Every platform process's environment: platform_env's test defaults, DEFAULT_SETTINGS, this
        stack's overrides and its servers (the database and S3 through their proxies)."""
        settings = {
            **DEFAULT_SETTINGS,
            **self.settings,
            "database_url": self.db_url if direct_db else self.proxied_db_url,
            "broker_url": self.redis.url,
            "storage_url": f"s3://{self.bucket}",
            "s3_endpoint_url": self.s3_url,
        }
        env = platform_env(self.root / "data", self.api_port, **settings)
        env.update(MotoS3.ENV, NO_PROXY="127.0.0.1,localhost", SYNCTALK_MODEL_SOURCES=model_sources())
        return env

    @property
    def s3_url(self) -> str:
        """S3 as the platform (and presigned URLs) reach it: through the proxy."""
        return f"http://127.0.0.1:{self.s3_proxy.port}"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def run(self, *args: str, env: dict | None = None, timeout: float = 120) -> str:
        """``synctalk ARGS`` to its end (a one-shot command); its output is logged and returned."""
        out = subprocess.run(
            [sys.executable, "-m", "services.cli.main", *args], env=env or self.env(), cwd=REPO,
            capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip
        with open(self.logs / "commands.log", "a") as log:
            log.write(f"$ synctalk {' '.join(args)}  -> {out.returncode}\n{out.stdout}{out.stderr}\n")
        if out.returncode != 0:
            raise RuntimeError(
                f"synctalk {' '.join(args)} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}"
            )
        return out.stdout

    def create_key(self, tenant: str) -> str:
        """A new API key for ``tenant`` (made directly on the database)."""
        return (
            self.run("keys", "create", "--tenant", tenant, env=self.env(direct_db=True))
            .strip()
            .splitlines()[-1]
        )

    # --- processes ------------------------------------------------------------------------------------------
    def start(
        self,
        name: str,
        *args: str,
        ready: Callable[[], None] | None = None,
        env: dict[str, str] | None = None,
    ) -> Proc:
        """``synctalk ARGS`` in the background as ``name`` (its own process group, output appended to
        ``logs/<name>.log``). ``ready`` (optional) is waited for now and after each restart; ``env``
        adds to (or overrides) the stack's environment for this process only, restarts included."""
        if name in self.procs and self.procs[name].alive():
            raise RuntimeError(f"{name} is already running (pid {self.procs[name].pid})")
        log = self.logs / f"{name}.log"
        runs = self.procs[name].runs + 1 if name in self.procs else 1
        with open(log, "ab") as fh:
            offset = fh.tell()
            fh.write(f"===== run {runs}: synctalk {' '.join(args)} =====\n".encode())
            fh.flush()
            popen = subprocess.Popen(
                [sys.executable, "-m", "services.cli.main", *args], env={**self.env(), **(env or {})}, cwd=REPO, stdout=fh,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        proc = self.procs[name] = Proc(name, tuple(args), log, popen, offset, ready, runs, env)
        if ready is not None:
            ready()
        return proc

    def start_api(self, name: str = "api", timeout: float = 120) -> Proc:
        """The API on ``api_port``, waited for until /healthz answers; ``client`` talks to it."""
        return self.start(
            name, "api", "--port", str(self.api_port), ready=lambda: self._wait_healthy(name, timeout)
        )

    def start_worker(
        self, queue: str, name: str | None = None, concurrency: int = 1, env: dict[str, str] | None = None
    ) -> Proc:
        """A Celery worker for ``queue`` (``cpu`` or ``gpu``) as process ``name`` (default: the queue),
        Celery-named ``<queue>1@faults`` (or ``<name>@faults``); ``wait_log(name, "ready.")`` waits until
        it consumes."""
        name = name or queue
        celery_name = f"{queue}1@faults" if name == queue else f"{name}@faults"
        return self.start(
            name,
            "worker",
            "--queues",
            queue,
            "--name",
            celery_name,
            "--concurrency",
            str(concurrency),
            env=env,
        )

    def start_scheduler(self, name: str = "scheduler", env: dict[str, str] | None = None) -> Proc:
        """``synctalk scheduler``: reaps, re-sends, delivers webhooks and prunes."""
        return self.start(name, "scheduler", env=env)

    def proc(self, name: str) -> Proc:
        if name not in self.procs:
            raise KeyError(f"no process named {name!r} (started: {', '.join(self.procs) or 'none'})")
        return self.procs[name]

    def kill(self, name: str) -> None:
        """SIGKILL the whole process group (the main process and its pool children): a lost machine."""
        proc = self.proc(name)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.popen.wait(10)

    def term(self, name: str) -> None:
        """SIGTERM to the main process only, as Kubernetes does before its grace period runs out."""
        self.proc(name).popen.send_signal(signal.SIGTERM)

    def wait_exit(self, name: str, timeout: float) -> int:
        """Wait for ``name`` to exit; its return code (negative: killed by that signal)."""
        try:
            return self.proc(name).popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"{name} still running after {timeout:g} s:\n{self.log_tail(name)}") from None

    def restart(self, name: str) -> Proc:
        """Kill ``name`` if it still runs, then start it again with the same arguments."""
        old = self.proc(name)
        if old.alive():
            self.kill(name)
        return self.start(name, *old.args, ready=old.ready, env=old.env)

    def pool_children(self, name: str) -> list[int]:
        """Pids of the main process's children: a Celery prefork worker's pool processes."""
        return _children_of(self.proc(name).pid)

    @staticmethod
    def kill_pid(pid: int) -> None:
        """SIGKILL one process (a pool child: Celery's master sees it die and forks another)."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)

    def alive(self, name: str) -> bool:
        return name in self.procs and self.procs[name].alive()

    def output(self, name: str) -> str:
        """What the current run of ``name`` printed so far."""
        proc = self.proc(name)
        with open(proc.log, "rb") as fh:
            fh.seek(proc.log_offset)
            return fh.read().decode(errors="replace")

    def wait_log(self, name: str, text: str, timeout: float = 60) -> None:
        """Wait until the current run of ``name`` printed ``text`` (e.g. a Celery worker's "ready.")."""

        def printed() -> bool:
            if not self.proc(name).alive() and text not in self.output(name):
                raise RuntimeError(f"{name} exited")
            return text in self.output(name)

        try:
            wait_until(printed, timeout, every=0.2, what=f"{name} printed {text!r}")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n{self.log_tail(name)}") from None

    def _wait_healthy(self, name: str, timeout: float) -> None:
        def healthy() -> bool:
            if not self.proc(name).alive():
                raise RuntimeError(f"{name} exited:\n{self.log_tail(name)}")
            return httpx.get(f"{self.api_url}/healthz", timeout=2, trust_env=False).status_code == 200

        try:
            wait_until(healthy, timeout, every=0.2, what=f"{name} answers /healthz")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n{self.log_tail(name)}") from None

    # --- the broker ----------------------------------------------------------------------------------------
    def redis_kill(self) -> None:
        """SIGKILL redis: the broker and every task in it are gone until ``redis_restart()``."""
        self.redis.kill()

    def redis_restart(self) -> None:
        """A fresh, empty redis on the same port (no persistence: queued tasks are lost)."""
        self.redis.restart()

    # --- the API -----------------------------------------------------------------------------------------
    @property
    def client(self) -> httpx.Client:
        """An httpx client to the API with this stack's key (no environment proxies)."""
        if self._client is None:
            self._client = httpx.Client(
                base_url=self.api_url, headers={"Authorization": f"Bearer {self.key}"}, timeout=30,
                trust_env=False,
            )  # fmt: skip
        return self._client

    def readyz(self) -> dict:
        """/readyz's answer (``status`` and ``checks``), whatever its HTTP status."""
        return self.client.get("/readyz").json()

    def wait_for(
        self, path: str, statuses: Iterable[str] = FINISHED, timeout: float = 600, every: float = 0.5
    ) -> dict:
        """Poll a job (``/v1/renders/ID``) until its status is one of ``statuses``; its last document.
        Errors and non-200 answers in between are ignored: the API may be what a fault is breaking."""
        wanted = tuple(statuses)
        last: dict = {}

        def done() -> dict | None:
            nonlocal last
            r = self.client.get(path)
            if r.status_code == 200:
                last = r.json()
                return last if last.get("status") in wanted else None
            return None

        try:
            return wait_until(done, timeout, every, what=f"{path} reaches {wanted}")
        except TimeoutError:
            raise TimeoutError(
                f"{path} still {last.get('status')} at {last.get('stage')} after {timeout:g} s: {last}"
            ) from None

    # --- the database, directly -------------------------------------------------------------------------------
    def db(self, sql: str, **params: Any) -> list[dict]:
        """Run ``sql`` (``:name`` parameters) straight on PostgreSQL, not through the proxy, in its own
        transaction; the rows as dicts ([] for statements without rows)."""
        from sqlalchemy import create_engine, text

        if self._engine is None:
            self._engine = create_engine(self.db_url, pool_size=2, max_overflow=2, pool_pre_ping=True)
        with self._engine.begin() as conn:
            result = conn.execute(text(sql), params)
            return [dict(row) for row in result.mappings()] if result.returns_rows else []

    def stages(self, job_id: str) -> list[dict]:
        """The job's stage rows in order: name, status, attempts, lease, ready_at, sent_at, heartbeat_at,
        worker, ..."""
        cols = ", ".join(STAGE_COLUMNS)
        return self.db(f"SELECT {cols} FROM stages WHERE job_id = :job ORDER BY position", job=job_id)

    wait_until = staticmethod(wait_until)

    # --- storage, directly ---------------------------------------------------------------------------------
    @property
    def s3(self):
        """A boto3 S3 client straight to moto (not through the proxy): for assertions and set-up."""
        if self._s3 is None:
            import boto3

            self._s3 = boto3.client(
                "s3", endpoint_url=self.moto.url, region_name=MotoS3.ENV["AWS_DEFAULT_REGION"],
                aws_access_key_id=MotoS3.ENV["AWS_ACCESS_KEY_ID"],
                aws_secret_access_key=MotoS3.ENV["AWS_SECRET_ACCESS_KEY"],
            )  # fmt: skip
        return self._s3

    def object_versions(self, key: str) -> int:
        """How many times ``key`` was written: the PUTs (a PutObject, or the CopyObject that publishes a
        finished upload) moto logged for exactly that key; multipart parts and temporary keys are not it."""
        from urllib.parse import quote

        line = f'"PUT /{self.bucket}/{quote(key, safe="/")} HTTP/'
        with open(self.logs / "moto.log", errors="replace") as fh:
            return sum(1 for entry in fh if line in entry and '" 200 ' in entry)

    def list_keys(self, prefix: str = "") -> list[str]:
        """The keys that exist now under ``prefix``, sorted."""
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))

    # --- logs and clean-up -----------------------------------------------------------------------------------
    def log_tail(self, name: str, lines: int = 60) -> str:
        return (
            f"----- {name} ({self.logs / (name + '.log')}) -----\n{_tail(self.logs / f'{name}.log', lines)}"
        )

    def tail_logs(self, lines: int = 60) -> str:
        """The end of every log of this stack: processes, one-shot commands, redis and moto."""
        parts = [self.log_tail(name, lines) for name in self.procs]
        for extra in ("commands", "moto"):
            parts.append(self.log_tail(extra, lines))
        if self.redis is not None:
            parts.append(f"----- redis ({self.redis.log}) -----\n{_tail(self.redis.log, 20)}")
        return "\n".join(parts)

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop_all()

    def stop_all(self) -> None:
        """Kill every process, close the clients, stop the servers and proxies, drop the database.
        Each step runs even when an earlier one fails; the first failure is raised at the end."""
        steps: list[Callable[[], None]] = [self._kill_group(name) for name in self.procs]
        steps += [
            lambda: self._client and self._client.close(),
            lambda: self._engine and self._engine.dispose(),
            lambda: self.redis and self.redis.stop(),
            lambda: self.moto and self.moto.stop(),
            lambda: self.db_proxy and self.db_proxy.stop(),
            lambda: self.s3_proxy and self.s3_proxy.stop(),
            lambda: self._drop_db and self._drop_db(),
        ]
        errors = []
        for step in steps:
            try:
                step()
            except Exception as exc:  # noqa: BLE001 -- clean up the rest, then report
                errors.append(exc)
        self._drop_db = None
        if errors:
            raise errors[0]

    def _kill_group(self, name: str) -> Callable[[], None]:
        def kill() -> None:
            proc = self.procs[name]
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # the group: orphaned pool children too
            proc.popen.wait(10)

        return kill


def dump_logs(stack: Stack, out: IO[str] | None = None, lines: int = 80) -> None:
    """Print the stack's logs (for scripts; tests get them in the failure report)."""
    print(stack.tail_logs(lines), file=out or sys.stderr)
