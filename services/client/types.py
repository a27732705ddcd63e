"""The v1 resources as the client returns them: plain dicts, typed for editors and checkers.

``total=False``: the API may add fields (the contract allows it); a script reads what it needs.
"""

from __future__ import annotations

from typing import Any, Literal, TypedDict

Status = Literal["queued", "running", "succeeded", "failed", "canceled"]
FINAL: frozenset[str] = frozenset({"succeeded", "failed", "canceled"})


class JobError(TypedDict):
    code: str
    message: str


class StageView(TypedDict, total=False):
    name: str
    status: Status
    progress: float
    started_at: str | None
    finished_at: str | None
    message: str | None


class Job(TypedDict, total=False):
    id: str
    object: str
    status: Status
    stage: str | None
    progress: float
    message: str | None
    eta_s: float | None
    error: JobError | None
    created_at: str
    updated_at: str
    started_at: str | None
    finished_at: str | None
    stages: list[StageView]


class Subject(Job, total=False):
    name: str
    profile: str
    report: dict[str, Any] | None
    metrics: dict[str, Any] | None


class Render(Job, total=False):
    subject_id: str
    batch_id: str | None
    ref: str | None
    mode: str
    start_frame: int
    duration_s: float | None
    qc: dict[str, Any] | None
    video_url: str | None


class Upload(TypedDict, total=False):
    id: str
    object: str
    url: str
    method: str
    headers: dict[str, str]
    expires_at: str
    filename: str
    content_type: str
    bytes: int
    status: str


class UploadList(TypedDict, total=False):
    object: str  # "list"
    data: list[Upload]  # in the order asked for


class BatchItem(TypedDict, total=False):
    upload_id: str  # required
    ref: str | None
    mode: str
    start_frame: int


class BatchRef(TypedDict):
    id: str
    ref: str | None


class Batch(TypedDict, total=False):
    id: str
    object: str
    subject_id: str
    renders: list[BatchRef]  # in the creation answer
    total: int  # in GET /v1/batches/{id}
    counts: dict[str, int]
    done: bool


class Webhook(TypedDict, total=False):
    id: str
    object: str
    url: str
    events: list[str]
    secret: str  # only in the creation answer
    created_at: str
    disabled_at: str | None


class Page(TypedDict):
    items: list[Any]
    next_cursor: str | None


class Event(TypedDict):
    id: str | None
    event: str
    data: Any
