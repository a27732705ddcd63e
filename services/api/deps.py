"""What routes depend on: the platform (settings, database, storage, queue), a session, the tenant.

``CurrentTenant`` resolves ``Authorization: Bearer <key>`` to the key's tenant (only a keyed hash of
the key is stored; the comparison is constant-time; a verified key is trusted for
``api_key_cache_s`` seconds, see keycache.py). Every resource route takes it and scopes every
query to it: another tenant's resource answers exactly like a missing one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Annotated

import anyio
import anyio.to_thread
from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from services.api.keycache import VerifiedKeys
from services.api.problems import ApiProblem
from services.api.ratelimit import charge_tenant
from shared import telemetry
from shared.db.api_keys import PREFIX_LEN, hash_key, verify_key
from shared.db.models import ApiKey
from shared.settings import Settings


@dataclass
class Platform:
    settings: Settings
    engine: Engine
    storage: object  # shared.storage.base.Storage
    celery: object  # celery.Celery (sends tasks by name)
    sessions: sessionmaker
    verified_keys: VerifiedKeys = field(default_factory=lambda: VerifiedKeys(ttl_s=0))
    session_slots: anyio.CapacityLimiter = field(default_factory=lambda: anyio.CapacityLimiter(30))

    @property
    def base_url(self) -> str:
        return self.settings.public_url.rstrip("/")

    def send(self, nxt) -> None:
        """Send the tasks of the stages a committed transaction made due; what the broker refuses is left
        to the scheduler (shared/jobs/dispatch.py), never to the request."""
        from shared.jobs.dispatch import send

        send(self.celery, self.sessions, list(nxt))


async def get_platform(request: Request) -> Platform:
    return request.app.state.platform  # async: no I/O, so no trip through the thread pool


PlatformDep = Annotated[Platform, Depends(get_platform)]


# Threads of their own for giving connections back. On the shared thread pool a close waits behind
# routes blocked on an empty connection pool, which only closes refill: 40 requests deadlocked the API
# at 200 requests/s (bench/api.py). A close never waits for a connection, so these few always move.
_RELEASE = anyio.CapacityLimiter(8)


async def release(fn: Callable[[], object]) -> None:
    """Run ``fn`` (a session's close or rollback) off the event loop, on the release threads, and to
    its end even when the request is cancelled (a client gone): a skipped close leaks its connection
    idle in a transaction."""
    with anyio.CancelScope(shield=True):
        await anyio.to_thread.run_sync(fn, limiter=_RELEASE)


async def get_session(platform: PlatformDep) -> AsyncIterator[Session]:
    """A session per request: committed by the route when it changes something, rolled back otherwise.

    At most ``api_db_sessions`` requests hold one at a time; the others wait here, on the event loop,
    holding nothing. Without that, 120 concurrent GETs deadlocked: 40 finished routes held every pooled
    connection while waiting for a thread to serialize their answer, and the 40 threads waited for a
    connection. With fewer sessions than connections, a session's queries never wait for the pool.
    Opening a session does no I/O (its connection is taken on the first query, on the route's thread);
    closing it does (the rollback, the connection back to the pool): that goes to ``release``."""
    async with platform.session_slots:
        session = platform.sessions()
        try:
            yield session
        finally:
            await release(session.close)  # close() rolls back whatever was not committed


SessionDep = Annotated[Session, Depends(get_session)]


@dataclass(frozen=True)
class Tenant:
    id: str
    key_prefix: str


def _find_key(platform: Platform, key: str) -> tuple[str, str] | None:
    """(tenant id, prefix) of a valid, unrevoked key; None otherwise."""
    with platform.sessions() as s:
        row = s.scalars(select(ApiKey).where(ApiKey.prefix == key[:PREFIX_LEN])).first()
        if row is None or row.revoked_at is not None:
            return None
        if not verify_key(key, row.key_hash, platform.settings.secret_key):
            return None
        return row.tenant_id, row.prefix


# Documents the scheme in OpenAPI (and /docs' "Authorize"); the key itself is checked below, so that every
# refusal is the same 401 problem
BEARER = HTTPBearer(auto_error=False, description="An API key (`synctalk keys create --tenant NAME`).")


async def get_tenant(
    request: Request,
    platform: PlatformDep,
    _scheme: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)],
) -> Tenant:
    """The key's tenant (401 for a missing, unknown or revoked key); the request is then counted
    against that tenant's rate limit (429 past it, services/api/ratelimit.py)."""
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise ApiProblem(
            401, "unauthorized", "Send your API key as 'Authorization: Bearer <key>'.",
            {"WWW-Authenticate": "Bearer"},
        )  # fmt: skip
    key = key.strip()
    secret = platform.settings.secret_key
    digest = hash_key(key, secret)
    cached = platform.verified_keys.get(digest)
    if cached is not None:
        tenant_id, prefix = cached
    else:
        row = await run_in_threadpool(_find_key, platform, key)
        if row is None:
            raise ApiProblem(
                401,
                "unauthorized",
                "This API key is not valid (revoked or mistyped).",
                {"WWW-Authenticate": "Bearer"},
            )
        tenant_id, prefix = row
        platform.verified_keys.put(digest, tenant_id, prefix)
    request.state.tenant_id = tenant_id  # for the access log
    telemetry.bind_tenant(tenant_id)  # the request's span and its log lines name the tenant
    await charge_tenant(request, tenant_id)  # the tenant's budget, whichever of its keys sent this
    return Tenant(id=tenant_id, key_prefix=prefix)


CurrentTenant = Annotated[Tenant, Depends(get_tenant)]
