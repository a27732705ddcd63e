"""The web dashboard the API serves itself (docs/DASHBOARD.md): server-rendered pages, small static
scripts and styles (no build step), and the v1 routes again under ``/dashboard/api`` for a browser
signed in with a session cookie. ``install(app)`` adds all of it to an API app."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"


def install(app: FastAPI) -> None:
    from services.dashboard.api import PREFIX, make_api
    from services.dashboard.pages import router

    app.include_router(router)
    app.mount("/dashboard/static", StaticFiles(directory=STATIC), name="dashboard-static")
    app.mount(PREFIX, make_api(app.state.platform), name="dashboard-api")
