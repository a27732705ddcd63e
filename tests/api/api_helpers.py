"""The API in-process on real parts: a database migrated with Alembic (a SQLite file, or a throw-away
Postgres database), a local storage folder, the embedded broker file, tenants with real keys, an HTTP
client; and a uvicorn server in a thread for what must go over a socket (event streams). A module of
its own, imported as ``from api_helpers import ...`` (never from conftest)."""

from __future__ import annotations

import contextlib
import json
import queue
import shutil
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import uvicorn
from alembic import command
from alembic.config import Config
from databases import throwaway_postgres
from fastapi import FastAPI
from sqlalchemy import func, select, update
from starlette.testclient import TestClient

from services.api.app import create_app
from services.api.deps import Platform
from shared.db.api_keys import PREFIX_LEN, generate_key, hash_key
from shared.db.models import ApiKey, Batch, Event, Subject, Tenant, utcnow
from shared.jobs import lifecycle, webhooks
from shared.queue.stages import stages_of
from shared.settings import Settings

REPO = Path(__file__).resolve().parents[2]
_template: Path | None = None
_template_lock = threading.Lock()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def migrate(url: str) -> None:
    cfg = Config(str(REPO / "alembic.ini"))
    cfg.set_main_option("sqlalchemy.url", url)
    command.upgrade(cfg, "head")


def sqlite_url(folder: Path) -> str:
    """A migrated SQLite file in ``folder``: a copy of one migrated once per test process."""
    global _template
    with _template_lock:
        if _template is None:
            path = Path(tempfile.mkdtemp(prefix="synctalk-api-template-")) / "template.db"
            migrate(f"sqlite:///{path}")
            _template = path
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_template, folder / "api.db")
    return f"sqlite:///{folder / 'api.db'}"


@contextmanager
def postgres_url() -> Iterator[str]:
    """A throw-away migrated database on the local Postgres server (SYNCTALK_TEST_POSTGRES_URL)."""
    with throwaway_postgres() as url:
        migrate(url)
        yield url


def api_settings(root: Path, database_url: str | None = None, **overrides) -> Settings:
    """Settings with every writable path under ``root``: SQLite (unless ``database_url``), a storage
    folder, the embedded broker file."""
    values = dict(
        environment="test",
        data_dir=root / "data",
        model_dir=root / "models",
        model_download=False,
        database_url=database_url or sqlite_url(root / "db"),
        storage_url=f"file://{root / 'storage'}",
    )
    values.update(overrides)
    return Settings(**values)


def add_tenant(platform: Platform, name: str) -> tuple[str, str]:
    """A tenant and a new API key for it: (tenant id, key)."""
    key, prefix = generate_key()
    with platform.sessions() as s:
        tenant = Tenant(name=name)
        s.add(tenant)
        s.flush()
        s.add(
            ApiKey(tenant_id=tenant.id, prefix=prefix, key_hash=hash_key(key, platform.settings.secret_key))
        )
        s.commit()
        return tenant.id, key


def add_key(platform: Platform, tenant_id: str) -> str:
    """Another API key of an existing tenant."""
    key, prefix = generate_key()
    with platform.sessions() as s:
        s.add(
            ApiKey(tenant_id=tenant_id, prefix=prefix, key_hash=hash_key(key, platform.settings.secret_key))
        )
        s.commit()
    return key


def revoke_key(platform: Platform, key: str) -> None:
    """What ``synctalk keys revoke PREFIX`` does."""
    with platform.sessions() as s:
        s.execute(update(ApiKey).where(ApiKey.prefix == key[:PREFIX_LEN]).values(revoked_at=utcnow()))
        s.commit()


@dataclass
class Api:
    app: FastAPI
    settings: Settings
    tenant_id: str
    key: str
    clients: list[TestClient] = field(default_factory=list)

    @property
    def platform(self) -> Platform:
        return self.app.state.platform

    def client(self, key: str | None = None) -> TestClient:
        """A client sending ``key`` (the first tenant's by default; "" for none)."""
        key = self.key if key is None else key
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        client = TestClient(self.app, headers=headers, raise_server_exceptions=False)
        self.clients.append(client)
        return client

    def close(self) -> None:
        for c in self.clients:
            c.close()
        self.platform.engine.dispose()


def make_api(root: Path, database_url: str | None = None, **settings) -> Api:
    app = create_app(api_settings(root, database_url, **settings))
    tenant_id, key = add_tenant(app.state.platform, "studio")
    return Api(app=app, settings=app.state.platform.settings, tenant_id=tenant_id, key=key)


@contextmanager
def served(app: FastAPI) -> Iterator[str]:
    """``app`` on a real socket (uvicorn in a thread); yields its base URL."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> dict:
        return json.loads(self.body)


class Receiver:
    """A webhook endpoint on a free port: records every POST; answers the statuses in ``answers`` in
    turn (200 once they run out); a 3xx answer redirects to ``/moved`` on itself. ``tls``: serves
    https with that server context."""

    def __init__(self, answers: list[int] | None = None, tls: ssl.SSLContext | None = None) -> None:
        self.requests: list[Received] = []
        self.answers = list(answers or [])
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 -- http.server's naming
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                with outer._lock:
                    outer.requests.append(
                        Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                    )
                    status = outer.answers.pop(0) if outer.answers else 200
                self.send_response(status)
                if 300 <= status < 400:
                    self.send_header("location", f"{outer.url}/moved")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:  # quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class EventStream:
    """``GET /v1/events`` read by a thread over a real connection: each message (``id``, ``event``,
    ``data`` decoded) lands on ``messages``; comment lines on ``comments``. ``key`` "": no Authorization
    header (a dashboard stream sends its cookie in ``headers``, at ``path``)."""

    def __init__(
        self, base_url: str, key: str, params: dict | None = None, headers: dict | None = None,
        path: str = "/v1/events",
    ):  # fmt: skip
        self.messages: queue.Queue[dict] = queue.Queue()
        self.comments: list[str] = []
        self.status: int | None = None
        self.body = b""
        self._ready = threading.Event()
        self._response: httpx.Response | None = None
        self.path = path
        auth = {"Authorization": f"Bearer {key}"} if key else {}
        self._client = httpx.Client(
            base_url=base_url, headers={**auth, **(headers or {})}, timeout=httpx.Timeout(10, read=60),
        )  # fmt: skip
        self._thread = threading.Thread(target=self._run, args=(params or {},), daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the event stream did not answer")

    def _run(self, params: dict) -> None:
        try:
            with self._client.stream("GET", self.path, params=params) as response:
                self._response, self.status = response, response.status_code
                if response.status_code != 200:
                    self.body = response.read()
                    return
                self._ready.set()  # the stream's starting point is fixed once the headers are sent
                fields: dict[str, str] = {}
                for line in response.iter_lines():
                    if line.startswith(":"):
                        self.comments.append(line)
                    elif line:
                        name, _, value = line.partition(":")
                        fields[name] = value.removeprefix(" ")
                    elif "data" in fields:
                        self.messages.put(
                            {
                                "id": int(fields["id"]),
                                "event": fields["event"],
                                "data": json.loads(fields["data"]),
                            }
                        )
                        fields = {}
                    else:
                        fields = {}
        except Exception:  # noqa: BLE001 -- the connection closed under the reader (close())
            pass
        finally:
            self._ready.set()

    def ended(self, timeout: float) -> bool:
        """Whether the server ended the stream within ``timeout`` seconds."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def take(self, n: int, timeout: float = 10) -> list[dict]:
        deadline = time.monotonic() + timeout
        return [self.messages.get(timeout=max(0.01, deadline - time.monotonic())) for _ in range(n)]

    def close(self) -> None:
        """Hang up, as a browser tab closing does (the socket is shut: the reader blocked on it wakes)."""
        if self._response is not None:
            stream = self._response.extensions.get("network_stream")
            sock = stream.get_extra_info("socket") if stream is not None else None
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(10)
        self._client.close()


# --- jobs moved through their life as workers move them (shared.jobs.lifecycle) ---------------------
def new_subject(platform: Platform, tenant_id: str, name: str) -> str:
    with platform.sessions() as s:
        subject, _ = lifecycle.create_subject(s, tenant_id, name=name, profile="tiny")
        s.commit()
        return subject.id


def run_job(platform: Platform, kind: str, job_id: str, *, progress_steps: int = 1) -> None:
    """Every stage of the job claimed, reporting progress, and finished: the job succeeds."""
    for spec in stages_of(kind):
        with platform.sessions() as s:
            stage = lifecycle.claim(
                s, kind, job_id, spec.name, task_id=f"task-{spec.name}", worker="test", stale_after_s=60
            )
            assert stage is not None, f"{kind} {job_id}: {spec.name} could not be claimed"
            s.commit()
            for i in range(progress_steps):
                lifecycle.progress(s, kind, job_id, stage, (i + 1) / (progress_steps + 1), f"step {i}")
                s.commit()
            lifecycle.finish_stage(s, kind, job_id, stage)
            s.commit()


def new_render(platform: Platform, tenant_id: str, subject_id: str, batch_id: str | None = None) -> str:
    with platform.sessions() as s:
        subject = s.get(Subject, subject_id)
        render, _ = lifecycle.create_render(s, tenant_id, subject, batch_id=batch_id)
        s.commit()
        return render.id


def new_batch(platform: Platform, tenant_id: str, subject_id: str) -> str:
    with platform.sessions() as s:
        batch = Batch(tenant_id=tenant_id, subject_id=subject_id)
        s.add(batch)
        s.commit()
        return batch.id


def events_of(platform: Platform, tenant_id: str, after: int = 0) -> list[Event]:
    with platform.sessions() as s:
        return list(
            s.scalars(select(Event).where(Event.tenant_id == tenant_id, Event.id > after).order_by(Event.id))
        )


def newest_event_id(platform: Platform) -> int:
    with platform.sessions() as s:
        return s.scalar(select(func.max(Event.id))) or 0


def fan_out_since(platform: Platform, after: int) -> int:
    """What ``lifecycle.emit`` does for each event it appends (fan_out is idempotent, so this is right
    whether emit already did it or not): the deliveries of every event after ``after``."""
    made = 0
    with platform.sessions() as s:
        for event in s.scalars(select(Event).where(Event.id > after).order_by(Event.id)):
            made += webhooks.fan_out(s, event)
        s.commit()
    return made
