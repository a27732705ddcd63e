"""The dashboard's pages at stable addresses: ``/login``, ``/`` (subjects), ``/upload``,
``/subjects/{id}``, ``/renders/{id}``. Each page is rendered on the server from the same v1 route
functions the API answers with (scoped to the session's tenant), then kept live by small scripts
that read ``/dashboard/api/v1/...`` (see api.py). Jinja2 escapes everything it prints.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote, urlsplit

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape
from sqlalchemy import func, select

from services.api.deps import Platform, Tenant
from services.api.problems import ApiProblem
from services.dashboard import session as sessions
from services.dashboard import words
from services.dashboard.api import PREFIX as API_PREFIX
from services.dashboard.api import current_session
from services.dashboard.security import page_headers
from shared.db.models import Event
from shared.db.states import JobState

HERE = Path(__file__).parent
router = APIRouter(include_in_schema=False)
templates = Environment(
    loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(("html",)), trim_blocks=True
)
PAGE_SIZE = 25
STATUSES = [s.value for s in JobState]


def _age(stamp: str | None) -> str:
    if not stamp:
        return ""
    seconds = (datetime.now(UTC) - datetime.fromisoformat(stamp.replace("Z", "+00:00"))).total_seconds()
    for size, unit in ((86400, "d"), (3600, "h"), (60, "min")):
        if seconds >= size:
            return f"{int(seconds // size)} {unit} ago"
    return "just now"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = max(0, int(round(seconds)))
    m, s = divmod(seconds, 60)
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min" if h else f"{m} min {s:02d} s" if m else f"{s} s"


def _span(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    a, b = (datetime.fromisoformat(t.replace("Z", "+00:00")) for t in (start, end))
    return (b - a).total_seconds()


templates.filters.update(age=_age, duration=_duration)
templates.globals.update(span=_span, advice=words.advice, qc_flags=words.QC_FLAGS, api=API_PREFIX)


def _metric_rows(metrics: dict) -> list[tuple[str, str]]:
    """The evaluation's figures a person reads: numbers at the top and in each part (self_driven, ...)."""
    rows: list[tuple[str, str]] = []
    for part, value in metrics.items():
        if isinstance(value, bool) or part in ("resolution",):
            continue
        if isinstance(value, int | float):
            rows.append((part.replace("_", " "), f"{value:.4g}"))
        elif isinstance(value, dict):
            for k, v in value.items():
                if isinstance(v, int | float) and not isinstance(v, bool):
                    rows.append((f"{part.replace('_', ' ')}: {k.replace('_', ' ')}", f"{v:.4g}"))
    return rows


templates.globals.update(metric_rows=_metric_rows)


def _newest_event(platform: Platform, tenant_id: str) -> int:
    with platform.sessions() as s:
        return s.scalar(select(func.max(Event.id)).where(Event.tenant_id == tenant_id)) or 0


def _page(request: Request, name: str, code: int = 200, **context) -> HTMLResponse:
    """A page; signed in (``session=``), it carries the CSRF token and the newest event id (the live
    stream resumes after it, so nothing that happens between this render and the stream's start is lost)."""
    platform: Platform = request.app.state.platform
    found = context.pop("session", None)
    csrf = sessions.csrf_token(found, platform.settings.secret_key) if found else ""
    context.setdefault("last_event", _newest_event(platform, found.tenant_id) if found else "")
    context.setdefault("max_bytes", platform.settings.media_max_bytes)
    html = templates.get_template(name).render(
        request=request, csrf=csrf, signed_in=found is not None, **context
    )
    return HTMLResponse(html, status_code=code, headers=page_headers(platform.settings))


def _to_login(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/login?next={quote(target)}", status_code=303)


def _safe_next(value: str | None) -> str:
    """Only a path on this site (never ``//host`` or ``https://...``): no open redirect after sign-in."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    parts = urlsplit(value)
    return value if not parts.scheme and not parts.netloc else "/"


def _signed_in(request: Request) -> sessions.DashboardSession | None:
    return current_session(request, request.app.state.platform)


def _call(request: Request, found: sessions.DashboardSession, fn, **kwargs):
    """A v1 route function, called as the session's tenant with a session of its own."""
    platform: Platform = request.app.state.platform
    with platform.sessions() as s:
        return fn(session=s, tenant=Tenant(found.tenant_id, found.key_prefix), **kwargs)


# --- sign-in ------------------------------------------------------------------------------------------
@router.get("/login")
def login_form(request: Request, next: str | None = None) -> Response:
    if _signed_in(request):
        return RedirectResponse(_safe_next(next), status_code=303)
    return _login_page(request, next, None, 200)


def _login_page(request: Request, next_path: str | None, error: str | None, status: int) -> HTMLResponse:
    token = secrets.token_urlsafe(16)
    response = _page(
        request, "login.html", status, next=_safe_next(next_path), error=error, login_token=token
    )
    options = sessions.cookie_options(request.app.state.platform.settings.public_url)
    response.set_cookie(sessions.LOGIN_COOKIE, token, max_age=3600, **{**options, "samesite": "strict"})
    return response


@router.post("/login")
def login(
    request: Request, key: str = Form(""), login_token: str = Form(""), next: str = Form("/")
) -> Response:
    platform: Platform = request.app.state.platform
    expected = request.cookies.get(sessions.LOGIN_COOKIE, "")
    if not expected or not secrets.compare_digest(expected, login_token):
        return _login_page(request, next, "The sign-in form expired; paste your key again.", 403)
    found = sessions.sign_in(platform.sessions, platform.settings.secret_key, key)
    if found is None:
        message = (
            "Paste your API key (it starts with stk_)."
            if not key.strip()
            else "This API key is not valid (revoked or mistyped)."
        )
        return _login_page(request, next, message, 401)
    response = RedirectResponse(_safe_next(next), status_code=303)
    options = sessions.cookie_options(platform.settings.public_url)
    response.set_cookie(
        sessions.COOKIE,
        sessions.encode(found, platform.settings.secret_key),
        max_age=sessions.MAX_AGE_S,
        **options,
    )
    response.delete_cookie(sessions.LOGIN_COOKIE, path="/")
    return response


@router.post("/logout")
def logout(request: Request, csrf: str = Form("")) -> Response:
    platform: Platform = request.app.state.platform
    found = _signed_in(request)
    if found is not None and not sessions.csrf_ok(found, platform.settings.secret_key, csrf):
        return HTMLResponse("This sign-out did not come from a dashboard page.", status_code=403)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(sessions.COOKIE, path="/")
    return response


# --- pages --------------------------------------------------------------------------------------------
@router.get("/")
def subjects_page(request: Request, status: str | None = None, cursor: str | None = None) -> Response:
    from services.api.routers.subjects import list_subjects

    found = _signed_in(request)
    if found is None:
        return _to_login(request)
    status = status if status in STATUSES else None
    try:
        listing = _call(request, found, list_subjects, limit=PAGE_SIZE, cursor=cursor, status=status)
    except ApiProblem:  # a cursor from elsewhere: the first page
        return RedirectResponse("/" + (f"?status={status}" if status else ""), status_code=303)
    return _page(
        request,
        "subjects.html",
        session=found,
        listing=listing,
        status_filter=status,
        statuses=STATUSES,
        cursor=cursor,
    )


@router.get("/upload")
def upload_page(request: Request) -> Response:
    found = _signed_in(request)
    if found is None:
        return _to_login(request)
    return _page(request, "upload.html", session=found)


@router.get("/subjects/{subject_id}")
def subject_page(request: Request, subject_id: str) -> Response:
    from services.api.routers.artifacts import list_report_images
    from services.api.routers.renders import list_renders
    from services.api.routers.subjects import read_subject

    found = _signed_in(request)
    if found is None:
        return _to_login(request)
    platform: Platform = request.app.state.platform

    def load() -> tuple[dict, dict, dict]:
        subject = _call(request, found, read_subject, subject_id=subject_id)
        renders = _call(
            request, found, list_renders, platform=platform, limit=100, cursor=None, subject_id=subject_id,
            status=None, batch_id=None,
        )  # fmt: skip
        images = _call(request, found, list_report_images, platform=platform, subject_id=subject_id)
        return subject, renders, images

    try:
        subject, renders, images = load()
    except ApiProblem as exc:
        return _page(request, "missing.html", exc.status, session=found, what="subject", detail=exc.detail)
    return _page(request, "subject.html", session=found, subject=subject, renders=renders, images=images)


@router.get("/renders/{render_id}")
def render_page(request: Request, render_id: str) -> Response:
    from services.api.routers.renders import read_render

    found = _signed_in(request)
    if found is None:
        return _to_login(request)
    platform: Platform = request.app.state.platform
    try:
        render = _call(request, found, read_render, platform=platform, render_id=render_id)
    except ApiProblem as exc:
        return _page(request, "missing.html", exc.status, session=found, what="render", detail=exc.detail)
    return _page(request, "render.html", session=found, render=render)
