"""``/dashboard/api/v1/...``: the v1 routes the dashboard's pages use, answered by the very same route
functions (and so the same tenant-scoped queries and documents), for a browser holding a session
cookie instead of a key.

It is a second small FastAPI app mounted on the API, sharing its platform, whose one difference is
the tenant dependency: ``get_tenant`` (Authorization: Bearer) is overridden by ``cookie_tenant``
(the signed session; for anything but GET/HEAD also the CSRF token). The key never reaches the
browser's JavaScript, and EventSource (which cannot send headers) works through the cookie.
Only what the dashboard needs is mounted: no batches, no webhooks (their secrets), no docs.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool

from services.api import problems
from services.api.deps import Platform, PlatformDep, Tenant, get_tenant
from services.api.problems import ApiProblem
from services.api.ratelimit import charge_tenant
from services.dashboard import session as sessions
from shared import telemetry

PREFIX = "/dashboard/api"
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


def current_session(request: Request, platform: Platform) -> sessions.DashboardSession | None:
    """The request's valid session (signature, age, and a live key), or None."""
    found = sessions.decode(request.cookies.get(sessions.COOKIE), platform.settings.secret_key)
    if found is None or not sessions.key_is_live(platform.sessions, found):
        return None
    return found


async def cookie_tenant(request: Request, platform: PlatformDep) -> Tenant:
    """The session's tenant (401 once the session ended or its key was revoked; 403 without the CSRF
    token on a change); the request is then counted against the tenant's rate limit, the same budget
    its API keys spend."""
    found = await run_in_threadpool(current_session, request, platform)  # a query: off the event loop
    if found is None:
        raise ApiProblem(401, "unauthorized", "Your dashboard session has ended; sign in again at /login.")
    if request.method not in SAFE_METHODS and not sessions.csrf_ok(
        found, platform.settings.secret_key, request.headers.get(sessions.CSRF_HEADER)
    ):
        raise ApiProblem(
            403, "csrf_failed", "This request did not come from a dashboard page; reload the page and retry."
        )
    request.state.tenant_id = found.tenant_id
    telemetry.bind_tenant(found.tenant_id)  # the request's span and its log lines name the tenant
    await charge_tenant(request, found.tenant_id)
    return Tenant(id=found.tenant_id, key_prefix=found.key_prefix)


def make_api(platform: Platform) -> FastAPI:
    from services.api.routers import artifacts, events, renders, subjects, uploads

    api = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    api.state.platform = platform
    problems.install(api)
    for module in (subjects, renders, uploads, events, artifacts):
        api.include_router(module.router)
    api.dependency_overrides[get_tenant] = cookie_tenant
    return api
