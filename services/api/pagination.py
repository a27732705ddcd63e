"""Cursor pagination, newest first (API.md "Lists"): ``?limit=`` (default 50, max 500) and ``?cursor=``.

The cursor is the last item's (created_at, id), opaque to clients: a page never repeats or skips an
item when new ones arrive meanwhile (they are newer than any cursor).
"""

from __future__ import annotations

import base64
import json
from datetime import datetime
from typing import Annotated

from fastapi import Query
from sqlalchemy import Select, tuple_

from services.api.problems import ApiProblem
from shared.db.states import JobState

Limit = Annotated[int, Query(ge=1, le=500, description="Items per page (newest first).")]
Cursor = Annotated[str | None, Query(description="The next_cursor of the previous page.")]
StatusFilter = Annotated[
    JobState | None, Query(description="queued | running | succeeded | failed | canceled")
]  # anything else is a 422, not an empty list


def encode(created_at: datetime, id_: str) -> str:
    raw = json.dumps([created_at.isoformat(), id_]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode(cursor: str) -> tuple[datetime, str]:
    try:
        created, id_ = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        return datetime.fromisoformat(created), str(id_)
    except (ValueError, TypeError) as exc:
        raise ApiProblem(
            422, "invalid_cursor", "The cursor is not one this API gave out; start from the first page."
        ) from exc


def page(stmt: Select, model, limit: int, cursor: str | None) -> Select:
    """``stmt`` (already tenant-scoped and filtered) ordered newest first, after ``cursor``, limit + 1 rows
    (the extra row says whether there is a next page)."""
    if cursor:
        created, id_ = decode(cursor)
        stmt = stmt.where(tuple_(model.created_at, model.id) < tuple_(created, id_))
    return stmt.order_by(model.created_at.desc(), model.id.desc()).limit(limit + 1)


def next_cursor(rows: list, limit: int) -> tuple[list, str | None]:
    if len(rows) <= limit:
        return rows, None
    rows = rows[:limit]
    return rows, encode(rows[-1].created_at, rows[-1].id)
