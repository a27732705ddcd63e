"""The platform's processes: ``synctalk serve`` (everything, one command), ``synctalk api``,
``synctalk worker --queues ...``, ``synctalk migrate``, ``synctalk keys create|revoke``.

On the embedded default (no settings) they share one data folder: a SQLite database, a storage folder
and a broker file; on the real stack the same commands run against Postgres, Redis and S3 by settings.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import click


def migrate_database(settings) -> None:
    """``alembic upgrade head`` on the settings' database (an explicit step, never at import; a SQLite
    file's under the lock its other users take, shared/db/schema.py)."""
    from shared.db.schema import upgrade

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.resolved_database_url)


def _database(settings):
    """An engine on the settings' database, its schema made current first on the embedded SQLite file
    (a first command on a fresh data folder needs no `synctalk migrate`); a server database behind this
    code's schema is a clear error naming `synctalk migrate`."""
    from shared.db.schema import ensure_schema
    from shared.db.session import make_engine

    ensure_schema(settings)
    return make_engine(settings)


@click.command("migrate")
def migrate() -> None:
    """Bring the database's schema up to date (alembic upgrade head)."""
    from shared.settings import get_settings

    migrate_database(get_settings())
    click.echo("database schema up to date")


@click.group("keys")
def keys() -> None:
    """API keys: shown once at creation, stored only as a hash."""


@keys.command("create")
@click.option("--tenant", required=True, help="Tenant name (created when new).")
def keys_create(tenant: str) -> None:
    """Create an API key for TENANT; the key is printed alone on the last line."""
    from sqlalchemy.exc import OperationalError, ProgrammingError

    from shared.db.api_keys import generate_key
    from shared.settings import get_settings

    settings = get_settings()
    key, prefix = generate_key()
    try:
        _add_key(_database(settings), settings, tenant, key, prefix)
    except (OperationalError, ProgrammingError) as exc:
        raise click.ClickException(
            f"the database cannot be used ({type(exc).__name__}): is it reachable, and its schema made "
            "with `synctalk migrate`?"
        ) from None
    click.echo(f"tenant {tenant!r}: new key {prefix}... (shown once; only its hash is stored)")
    click.echo(key)


def _add_key(engine, settings, tenant: str, key: str, prefix: str) -> None:
    """The key's row, and its tenant's when new. Two commands creating the same new tenant at once: the
    second's insert breaks the unique name, and its retry finds the first's tenant."""
    from sqlalchemy import select
    from sqlalchemy.exc import IntegrityError

    from shared.db.api_keys import hash_key
    from shared.db.models import ApiKey, Tenant
    from shared.db.session import session_scope

    for attempt in range(3):
        try:
            with session_scope(engine) as s:
                row = s.scalars(select(Tenant).where(Tenant.name == tenant)).first()
                if row is None:
                    row = Tenant(name=tenant)
                    s.add(row)
                    s.flush()
                s.add(ApiKey(tenant_id=row.id, prefix=prefix, key_hash=hash_key(key, settings.secret_key)))
            return
        except IntegrityError:
            if attempt == 2:
                raise


@keys.command("revoke")
@click.argument("prefix")
def keys_revoke(prefix: str) -> None:
    """Revoke the key starting with PREFIX (as listed when it was made)."""
    from sqlalchemy import select

    from shared.db.api_keys import PREFIX_LEN
    from shared.db.models import ApiKey, utcnow
    from shared.db.session import session_scope
    from shared.settings import get_settings

    with session_scope(_database(get_settings())) as s:
        row = s.scalars(select(ApiKey).where(ApiKey.prefix == prefix[:PREFIX_LEN])).first()
        if row is None or len(prefix) < 8:
            raise click.ClickException(f"no key starts with {prefix!r}")
        row.revoked_at = row.revoked_at or utcnow()
    click.echo(f"revoked {row.prefix}...")


@click.command("api")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option(
    "--workers", default=1, show_default=True, type=click.IntRange(1, 64),
    help="API processes (one per core on the real stack; they share rate-limit counts through Redis and "
    "their request metrics through a folder).",
)  # fmt: skip
def api(host: str, port: int, workers: int) -> None:
    """Serve the HTTP API (and the dashboard)."""
    import uvicorn

    from services.api.metrics_dir import shared_metrics_dir
    from shared.settings import get_settings

    shared_metrics_dir(get_settings(), workers)  # before the processes start: they inherit it

    # uvicorn picks uvloop and httptools (requirements.lock): a small GET costs a third less CPU than
    # on asyncio's loop and the pure-Python h11 parser
    uvicorn.run(
        "services.api.app:create_app", factory=True, host=host, port=port, workers=workers,
        log_level="info", proxy_headers=False,  # client addresses: SYNCTALK_TRUSTED_PROXIES
    )  # fmt: skip


@click.command("worker")
@click.option("--queues", default="cpu,gpu", show_default=True, help="Comma list of cpu, gpu.")
@click.option("--concurrency", default=1, show_default=True, help="Tasks at once (one per GPU for gpu).")
@click.option("--name", default=None, help="Worker name (default: the queues @ the host).")
def worker(queues: str, concurrency: int, name: str | None) -> None:
    """Run a worker for the given queues (stages: ingest and preprocess on cpu, train and render on gpu)."""
    from gpu_worker.tasks.celery_app import app

    wanted = [q.strip() for q in queues.split(",") if q.strip()]
    bad = [q for q in wanted if q not in ("cpu", "gpu")]
    if bad or not wanted:
        raise click.ClickException(f"--queues takes cpu and/or gpu, got {queues!r}")
    app.worker_main(
        [
            "worker", "-Q", ",".join(wanted), "-c", str(concurrency), "-P", "prefork",
            "-n", name or f"{'-'.join(wanted)}@%h", "--loglevel", "INFO", "--without-gossip", "--without-mingle",
        ]
    )  # fmt: skip


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
def serve(host: str, port: int) -> None:
    """Everything in one command: the database migrated, a worker for each queue, the scheduler, the API."""
    from shared.settings import get_settings

    settings = get_settings()
    migrate_database(settings)
    env = {
        **os.environ,
        "SYNCTALK_PUBLIC_URL": os.environ.get("SYNCTALK_PUBLIC_URL", f"http://{host}:{port}"),
    }
    exe = [sys.executable, "-m", "services.cli.main"]
    children = [
        subprocess.Popen([*exe, "worker", "--queues", q, "--name", f"{q}@serve"], env=env)
        for q in ("cpu", "gpu")
    ]
    children.append(subprocess.Popen([*exe, "scheduler"], env=env))
    click.echo(
        f"synctalk: API on http://{host}:{port}, workers for cpu and gpu, the scheduler; data in {settings.data_dir}"
    )
    api_proc = subprocess.Popen([*exe, "api", "--host", host, "--port", str(port)], env=env)
    children.append(api_proc)
    stop = {"asked": False}

    def _ask_stop(_signum, _frame) -> None:  # SIGTERM (a supervisor, a test) stops the children too
        stop["asked"] = True

    signal.signal(signal.SIGTERM, _ask_stop)
    try:
        while not stop["asked"] and all(c.poll() is None for c in children):
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        for c in children:
            if c.poll() is None:
                c.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 20
        for c in children:
            try:
                c.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                c.kill()
    failed = [c.args[3] for c in children if c.returncode not in (0, -signal.SIGTERM, None)]
    if failed:
        raise click.ClickException(f"stopped: {', '.join(map(str, failed))} exited")
