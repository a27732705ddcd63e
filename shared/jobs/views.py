"""Subjects and renders as the v1 contract shows them (API.md "Job-like resources").

One function per resource, shared by the API's responses and the event log (SSE and webhooks carry
"the resource as JSON"), so a client sees the same document whichever way it learns of a change.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from shared.db.models import Render, Stage, Subject


def rfc3339(t: datetime | None) -> str | None:
    """RFC 3339 UTC with a Z (SQLite hands back naive datetimes: they were written in UTC)."""
    if t is None:
        return None
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return t.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def stage_view(stage: Stage) -> dict[str, Any]:
    return {
        "name": stage.name,
        "status": stage.status,
        "progress": round(stage.progress, 4),
        "started_at": rfc3339(stage.started_at),
        "finished_at": rfc3339(stage.finished_at),
        "message": stage.message,
    }


def _job(row: Subject | Render, stages: list[Stage]) -> dict[str, Any]:
    error = {"code": row.error_code, "message": row.error_message} if row.status == "failed" else None
    return {
        "id": row.id,
        "status": row.status,
        "stage": row.stage,
        "progress": round(row.progress, 4),
        "message": row.message,
        "eta_s": None if row.eta_s is None else round(row.eta_s, 1),
        "error": error,
        "created_at": rfc3339(row.created_at),
        "updated_at": rfc3339(row.updated_at),
        "started_at": rfc3339(row.started_at),
        "finished_at": rfc3339(row.finished_at),
        "stages": [stage_view(s) for s in sorted(stages, key=lambda s: s.position)],
    }


def subject_view(subject: Subject, stages: list[Stage]) -> dict[str, Any]:
    return {
        **_job(subject, stages),
        "object": "subject",
        "name": subject.name,
        "profile": subject.profile,
        "report": subject.report,
        "metrics": subject.metrics,
    }


def render_view(render: Render, stages: list[Stage], base_url: str = "") -> dict[str, Any]:
    """``base_url``: the API's public address; ``video_url`` points at the render's video route."""
    done = render.status == "succeeded" and render.video_key is not None
    return {
        **_job(render, stages),
        "object": "render",
        "subject_id": render.subject_id,
        "batch_id": render.batch_id,
        "ref": render.ref,
        "mode": render.mode,
        "start_frame": render.start_frame,
        "duration_s": render.duration_s,
        "qc": render.qc,
        "video_url": f"{base_url.rstrip('/')}/v1/renders/{render.id}/video" if done else None,
        # captions (additive): what was asked, the captions' language (asked, or detected once made)
        "captions": render.captions or "on",
        "language": render.captions_language or render.language,
        "captions_url": f"{base_url.rstrip('/')}/v1/renders/{render.id}/captions"
        if done and render.captions_key
        else None,
    }
