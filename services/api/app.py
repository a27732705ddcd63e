"""The API's app factory: ``create_app(settings)`` -> FastAPI, with the platform (database, storage,
queue) on ``app.state.platform``. Nothing heavy is imported here: the media layer loads on the first
upload, the model code never (the API sends tasks by name).
"""

from __future__ import annotations

import anyio
from fastapi import FastAPI
from sqlalchemy.orm import sessionmaker

from services.api import problems
from services.api.deps import Platform
from services.api.keycache import VerifiedKeys
from shared import telemetry
from shared.settings import Settings, get_settings

DESCRIPTION = """Dub video with digital doubles. Upload a few minutes of a person talking (a *subject*);
the platform learns that person, then renders speech tracks onto them. Auth: `Authorization: Bearer
<api key>` on every `/v1` route. Errors are `application/problem+json` with a stable `code`.
The contract: ../shared/design/API.md."""


def make_platform(settings: Settings) -> Platform:
    from shared.db.schema import ensure_schema
    from shared.db.session import make_engine
    from shared.queue.app import make_celery
    from shared.storage import storage_from_settings

    # the embedded SQLite file is made current here (the API may be the first to open it); a server
    # database is left to `synctalk migrate`, and the API starts whatever its state (/readyz tells)
    ensure_schema(settings, verify=False)
    engine = make_engine(settings)
    return Platform(
        settings=settings,
        engine=engine,
        storage=storage_from_settings(settings),
        celery=make_celery(settings),
        sessions=sessionmaker(engine, expire_on_commit=False),
        verified_keys=VerifiedKeys(ttl_s=settings.api_key_cache_s),
        session_slots=anyio.CapacityLimiter(settings.api_db_sessions),
    )


def create_app(settings: Settings | None = None, platform: Platform | None = None) -> FastAPI:
    from services.api.routers import (
        artifacts,
        batches,
        events,
        files,
        ops,
        renders,
        subjects,
        uploads,
        webhooks,
    )
    from services.dashboard import install as install_dashboard

    settings = settings or get_settings()
    # this process's traces and log format (uvicorn configured its loggers before calling this factory)
    telemetry.setup(settings, "synctalk-api")
    telemetry.configure_logging(settings)
    app = FastAPI(title="SyncTalk platform", version="1", description=DESCRIPTION)
    app.state.platform = platform or make_platform(settings)
    problems.install(app)
    for module in (subjects, renders, batches, uploads, events, webhooks, ops, files, artifacts):
        app.include_router(module.router)
    install_dashboard(app)  # the web dashboard's pages and its cookie-signed v1 routes (docs/DASHBOARD.md)
    from services.api.ratelimit import RateLimit, limiter_from_settings
    from services.api.tracing import TraceRequests

    # every request is counted against its client address here, then against its tenant once the
    # tenant dependency has authenticated it (ratelimit.charge_tenant); app.state.limiter for tests
    app.state.limiter = limiter_from_settings(settings)
    app.add_middleware(RateLimit, limiter=app.state.limiter, observe=ops.observe)
    # added last, so outermost: the request's span covers the rate limits too (a 429 is traced)
    app.add_middleware(TraceRequests)
    return app
