"""What routes depend on: the platform (settings, database, storage, queue), a session, the tenant.

``CurrentTenant`` resolves ``Authorization: Bearer <key>`` to the key's tenant (only a keyed hash of
the key is stored; the comparison is constant-time). Every resource route takes it and scopes every
query to it: another tenant's resource answers exactly like a missing one.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from services.api.problems import ApiProblem
from shared.db.api_keys import PREFIX_LEN, verify_key
from shared.db.models import ApiKey
from shared.settings import Settings


@dataclass
class Platform:
    settings: Settings
    engine: Engine
    storage: object  # shared.storage.base.Storage
    celery: object  # celery.Celery (sends tasks by name)
    sessions: sessionmaker

    @property
    def base_url(self) -> str:
        return self.settings.public_url.rstrip("/")

    def send(self, nxt) -> None:
        """Queue the stages a committed transaction asked for."""
        from shared.queue.app import send_stage

        for n in nxt:
            send_stage(self.celery, n.kind, n.job_id, n.stage)


def get_platform(request: Request) -> Platform:
    return request.app.state.platform


PlatformDep = Annotated[Platform, Depends(get_platform)]


def get_session(platform: PlatformDep) -> Iterator[Session]:
    """A session per request: committed by the route when it changes something, rolled back otherwise."""
    session = platform.sessions()
    try:
        yield session
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


SessionDep = Annotated[Session, Depends(get_session)]


@dataclass(frozen=True)
class Tenant:
    id: str
    key_prefix: str


# Documents the scheme in OpenAPI (and /docs' "Authorize"); the key itself is checked below, so that every
# refusal is the same 401 problem
BEARER = HTTPBearer(auto_error=False, description="An API key (`synctalk keys create --tenant NAME`).")


def get_tenant(
    request: Request,
    platform: PlatformDep,
    _scheme: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)],
) -> Tenant:
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise ApiProblem(
            401, "unauthorized", "Send your API key as 'Authorization: Bearer <key>'.",
            {"WWW-Authenticate": "Bearer"},
        )  # fmt: skip
    key = key.strip()
    with platform.sessions() as s:
        row = s.scalars(select(ApiKey).where(ApiKey.prefix == key[:PREFIX_LEN])).first()
        valid = (
            row is not None
            and row.revoked_at is None
            and verify_key(key, row.key_hash, platform.settings.secret_key)
        )
    if not valid:
        raise ApiProblem(
            401,
            "unauthorized",
            "This API key is not valid (revoked or mistyped).",
            {"WWW-Authenticate": "Bearer"},
        )
    request.state.tenant_id = row.tenant_id  # for the rate limiter and the access log
    return Tenant(id=row.tenant_id, key_prefix=row.prefix)


CurrentTenant = Annotated[Tenant, Depends(get_tenant)]
