"""A trace across processes: the API in this process (spans in memory) queues a subject's first stage;
a real worker process (``synctalk worker``) runs it and exports its spans over OTLP/HTTP to a receiver
on loopback (``SYNCTALK_OTLP_ENDPOINT``). The stage's span continues the API request's trace, its
database and storage calls are its children, and its JSON log lines carry the same ids."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from api_helpers import make_api
from opentelemetry.trace import SpanKind
from otlp_receiver import OtlpReceiver

from gpu_worker.media.binaries import ffmpeg_exe

REPO = Path(__file__).resolve().parents[2]


def _talking_video(path: Path) -> bytes:
    """3 s of a test picture with a tone: a valid subject video for the API's and the worker's probes."""
    subprocess.run(
        [ffmpeg_exe(), "-v", "error", "-y", "-nostdin", "-f", "lavfi", "-i", "testsrc=size=64x48:rate=25:duration=3",
         "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=16000:duration=3", "-c:v", "libx264",
         "-pix_fmt", "yuv420p", "-preset", "ultrafast", "-c:a", "aac", "-shortest", str(path)],
        check=True, timeout=60,
    )  # fmt: skip
    return path.read_bytes()


def _worker_env(settings, otlp_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SYNCTALK_", "OTEL_"))}
    env.update(
        SYNCTALK_ENVIRONMENT="test",
        SYNCTALK_DATA_DIR=str(settings.data_dir),
        SYNCTALK_DATABASE_URL=settings.database_url,
        SYNCTALK_STORAGE_URL=settings.storage_url,
        SYNCTALK_BROKER_URL=settings.broker_url,
        SYNCTALK_MIN_TRAIN_SECONDS="1",
        SYNCTALK_MODEL_DOWNLOAD="false",
        SYNCTALK_MODEL_SOURCES=os.environ.get("SYNCTALK_MODEL_SOURCES", ""),
        SYNCTALK_OTLP_ENDPOINT=otlp_url,
        SYNCTALK_LOG_FORMAT="json",
        OTEL_BSP_SCHEDULE_DELAY="100",  # export within a tenth of a second, not five
        PYTHONUNBUFFERED="1",
    )
    return env


@pytest.fixture
def receiver():
    made = OtlpReceiver()
    yield made
    made.close()


def test_a_stage_in_a_worker_process_continues_the_trace_of_the_request(tmp_path, spans, receiver):
    api = make_api(tmp_path, broker_url=f"sqla+sqlite:///{tmp_path / 'broker.db'}", min_train_seconds=1,
                   default_profile="tiny")  # fmt: skip
    video = _talking_video(tmp_path / "talk.mp4")
    log_path = tmp_path / "worker.log"
    with open(log_path, "wb") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "services.cli.main", "worker", "--queues", "cpu", "--name", "cpu@telemetry"],
            env=_worker_env(api.settings, receiver.url), cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,  # its pool processes go with it
        )  # fmt: skip
    try:
        r = api.client().post("/v1/subjects", files={"video": ("talk.mp4", video, "video/mp4")})
        assert r.status_code == 202, r.text
        subject_id = r.json()["id"]
        finished = spans.get_finished_spans()
        server = next(s for s in finished if s.kind == SpanKind.SERVER and s.name == "POST /v1/subjects")
        trace_id = f"{server.context.trace_id:032x}"
        in_api = {
            f"{s.context.span_id:016x}" for s in finished if s.context.trace_id == server.context.trace_id
        }

        def is_ingest(s) -> bool:
            return s.name == "stage subject.ingest" and s.attributes.get("synctalk.job_id") == subject_id

        received = receiver.wait_for(is_ingest, timeout=90)
        stage = next(s for s in received if is_ingest(s))
        assert stage.service == "synctalk-worker" and stage.trace_id == trace_id
        assert stage.parent_span_id in in_api  # the API's send of this task, in the request's trace
        assert (
            stage.attributes["synctalk.stage"] == "ingest" and stage.attributes["synctalk.kind"] == "subject"
        )
        assert stage.attributes["synctalk.tenant_id"] == api.tenant_id
        assert (
            stage.attributes["synctalk.attempt"] == 1 and stage.attributes["messaging.destination"] == "cpu"
        )
        assert stage.attributes["synctalk.outcome"] == "done" and stage.status_code != 2

        children = [s for s in received if s.parent_span_id == stage.span_id]
        assert any(s.attributes.get("db.system") == "sqlite" for s in children), [s.name for s in children]
        stored = {
            s.attributes.get("synctalk.storage.operation") for s in children if s.name.startswith("storage ")
        }
        assert {"get_file", "put_file"} <= stored, stored  # the upload fetched, the source stored
        assert all(s.trace_id == trace_id for s in children)
        nxt = next(s for s in children if s.name == "send stages")  # the next stage's task, in the same trace
        assert nxt.attributes["messaging.batch.message_count"] == 1

        lines = [json.loads(x) for x in log_path.read_text().splitlines() if x.startswith("{")]
        ours = [x for x in lines if x.get("job_id") == subject_id and x.get("trace_id") == trace_id]
        assert ours and ours[-1]["message"].endswith("ingest stage: done"), lines[-5:]
        assert ours[-1]["tenant_id"] == api.tenant_id and ours[-1]["stage"] == "ingest"
        assert ours[-1]["span_id"] == stage.span_id
    except BaseException:
        print(log_path.read_text(errors="replace")[-6000:])
        raise
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(10)
        api.close()
