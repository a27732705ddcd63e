"""Work the API accepted survives a broker that is down: the job is committed with its idempotency key
and answered 202, its task is left in the outbox (the stage due, unsent) for the scheduler, and a
client's retry with the same key gets the same job instead of a second one. A database that is down
answers 503 with Retry-After, never a 500."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from api_helpers import Api, make_api
from sqlalchemy import func, select

from shared.db.models import Stage, Subject


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again: nothing listens there


@pytest.fixture
def api_without_broker(tmp_path: Path) -> Iterator[Api]:
    made = make_api(
        tmp_path,
        min_train_seconds=2,
        default_profile="tiny",
        broker_url=f"redis://127.0.0.1:{_dead_port()}/0",
    )
    yield made
    made.close()


def test_a_job_accepted_while_the_broker_is_down_is_kept_once_and_left_to_the_scheduler(
    api_without_broker, media
):
    api = api_without_broker
    client = api.client()
    video = {"video": ("talk.mp4", media["video"], "video/mp4")}
    first = client.post("/v1/subjects", files=video, headers={"Idempotency-Key": "k-1"})
    assert first.status_code == 202, first.text
    again = client.post("/v1/subjects", files=video, headers={"Idempotency-Key": "k-1"})
    assert again.status_code == 202 and again.json()["id"] == first.json()["id"]
    assert again.headers.get("idempotent-replayed") == "true"
    with api.platform.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Subject)) == 1
        stage = s.scalars(
            select(Stage).where(Stage.job_id == first.json()["id"], Stage.name == "ingest")
        ).one()
        assert stage.status == "queued" and stage.ready_at is not None and stage.sent_at is None


def test_a_database_that_is_down_answers_503_with_retry_after(tmp_path: Path):
    api = make_api(tmp_path)
    try:
        client = api.client()
        assert client.get("/v1/subjects").status_code == 200
        # the database becomes unreachable: its file is replaced by a folder, which SQLite cannot open
        api.platform.engine.dispose()
        db = Path(api.settings.resolved_database_url.removeprefix("sqlite:///"))
        db.rename(db.with_suffix(".gone"))
        db.mkdir()
        r = client.get("/v1/subjects")
        assert r.status_code == 503, r.text
        assert r.json()["code"] == "service_unavailable" and r.headers["retry-after"]
    finally:
        api.close()
