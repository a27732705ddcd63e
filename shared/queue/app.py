"""The Celery app every process builds from the settings: queues, reliability options, task names.

Tasks are sent by name (``send_stage``), so the API never imports the worker code. Long stages on
Redis: ``acks_late`` redelivers a task whose worker died; the visibility timeout is longer than the
longest stage, and the stages themselves make a redelivery harmless (they never redo finished work).
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

from celery import Celery
from kombu import Queue
from opentelemetry.trace import SpanKind

from shared import telemetry
from shared.queue.stages import QUEUES, VISIBILITY_TIMEOUT_S, stage_spec
from shared.settings import Settings

TASK_RUN_STAGE = "synctalk.run_stage"
TASK_REAP = "synctalk.reap"
TASK_DELIVER_WEBHOOKS = "synctalk.deliver_webhooks"


def make_celery(settings: Settings) -> Celery:
    broker = settings.resolved_broker_url
    if broker.startswith("sqla+sqlite:///"):  # the embedded broker's file lives under data_dir
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    app = Celery("synctalk", broker=broker, set_as_current=False)
    app.conf.update(
        task_queues=[Queue(q, routing_key=q) for q in QUEUES],
        task_default_queue="cpu",
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,  # job state lives in the database, not in Celery results
        result_backend=None,
        task_acks_late=True,  # a task is acknowledged when done: a worker that dies mid-stage loses nothing
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,  # long tasks: a worker holds one at a time
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        # a worker keeps reconnecting to a broker that is down (it exits after 100 tries by default)
        broker_connection_max_retries=None,
        broker_connection_timeout=3,
        worker_cancel_long_running_tasks_on_connection_loss=False,
        # a send gives up quickly: the stage stays in the database's outbox and the scheduler sends it
        task_publish_retry_policy={
            "max_retries": 2,
            "interval_start": 0,
            "interval_step": 0.25,
            "interval_max": 0.5,
        },
    )
    if broker.startswith(("redis://", "rediss://")):
        app.conf.broker_transport_options = {
            "visibility_timeout": VISIBILITY_TIMEOUT_S,
            "socket_connect_timeout": 3,
        }
        # A worker reserves no task while its processes are busy (prefetch 1 alone still takes one more
        # per process), so each queue's list holds exactly the tasks no worker took yet: what KEDA's
        # redis scaler reads to size the worker Deployments (deploy/helm). Priorities stay unused: Celery
        # keeps each priority level in a list of its own, which the scaler would not see.
        app.conf.worker_disable_prefetch = True
    return app


def queue_depths(app: Celery, timeout_s: float = 2.0) -> dict[str, int]:
    """Tasks waiting in each queue (taken ones are not counted); {} when the broker cannot be reached,
    a queue left out when it cannot be read."""
    found: dict[str, int] = {}
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=timeout_s)
            for queue in QUEUES:
                channel = conn.channel()
                try:
                    found[queue] = channel.queue_declare(queue=queue, passive=True).message_count
                except Exception as exc:  # noqa: BLE001 -- a queue nothing was ever sent to does not exist yet
                    if _missing_queue(exc):
                        found[queue] = 0
                finally:
                    channel.close()
    except Exception:  # noqa: BLE001 -- the broker is unreachable: nothing is known
        return {}
    return found


def _missing_queue(exc: Exception) -> bool:
    """Whether a passive declare failed because the queue does not exist (it holds nothing then)."""
    from kombu.exceptions import ChannelError

    return isinstance(exc, ChannelError) or "NOT_FOUND" in str(exc) or "no queue" in str(exc).lower()


def send_stage(
    app: Celery, kind: str, job_id: str, stage: str, *, producer=None, trace_context: str | None = None
) -> str:
    """Queue one stage of a job on its queue with its time limits; returns the task id. Call it only
    after the transaction that created or advanced the job has committed. ``producer``: one from
    ``send_stages`` (many sends over one broker connection). The message's headers carry the W3C trace
    context (``traceparent``): the current span's, or ``trace_context`` (the one stored on the stage
    row) when no span of this job is current (shared/telemetry/propagation.py)."""
    spec = stage_spec(kind, stage)
    attributes = {"synctalk.job_id": job_id, "synctalk.kind": kind, "synctalk.stage": stage,
                  "messaging.system": "celery", "messaging.destination": spec.queue}  # fmt: skip
    with telemetry.sending(job_id, trace_context, f"send {kind}.{stage}", attributes) as headers:
        result = app.send_task(
            TASK_RUN_STAGE,
            args=[kind, job_id, stage],
            queue=spec.queue,
            routing_key=spec.queue,
            time_limit=spec.time_limit_s,
            soft_time_limit=max(60, spec.time_limit_s - 60),
            producer=producer,
            headers=headers,
        )
    return result.id


def send_stages(app: Celery, stages) -> list[str]:
    """``send_stage`` for each (kind, job_id, stage[, trace_context]), all through one producer and, on
    Redis, pipelined (kombu's publish batch: one round trip per few hundred tasks instead of a Redis
    client per task); brokers without batches publish one by one. Inside a traced request or stage the
    batch is a PRODUCER span ``send stages``, the parent of the stages' spans in the workers."""
    stages = list(stages)
    if not stages:
        return []
    with _send_span(len(stages)), app.producer_or_acquire() as producer, producer.batch(max_size=500):
        return [
            send_stage(app, kind, job_id, stage, producer=producer, trace_context=rest[0] if rest else None)
            for kind, job_id, stage, *rest in stages
        ]


def _send_span(count: int) -> AbstractContextManager:
    if not telemetry.recording():
        return nullcontext()
    return telemetry.tracer().start_as_current_span(
        "send stages",
        kind=SpanKind.PRODUCER,
        attributes={"messaging.system": "celery", "messaging.batch.message_count": count},
    )
