"""The stages of each job, the queue each runs on, its time limit and its share of the job's progress."""

from __future__ import annotations

from dataclasses import dataclass

from shared.db.states import JobKind

CPU, GPU = "cpu", "gpu"
QUEUES = (CPU, GPU)


@dataclass(frozen=True)
class StageSpec:
    name: str
    queue: str
    weight: float  # share of the job's progress (the weights of a job sum to 1)
    time_limit_s: int  # hard limit of one run (Celery kills the task past it)


STAGES: dict[JobKind, tuple[StageSpec, ...]] = {
    JobKind.subject: (
        StageSpec("ingest", CPU, 0.02, 30 * 60),  # the upload to a normalized source in storage
        StageSpec("preprocess", CPU, 0.18, 6 * 3600),  # the dataset
        StageSpec("train", GPU, 0.80, 24 * 3600),  # head, lips, torso, evaluation
    ),
    JobKind.render: (
        StageSpec("render", GPU, 1.0, 12 * 3600),  # speech -> frames -> encode + mux -> QC
    ),
}

# Longer than any stage: with acks_late, the Redis broker redelivers a task that was not acknowledged
# within this time, so it must exceed the longest legitimate run (the stages also make redelivery harmless).
VISIBILITY_TIMEOUT_S = max(s.time_limit_s for specs in STAGES.values() for s in specs) + 3600


def stages_of(kind: JobKind | str) -> tuple[StageSpec, ...]:
    return STAGES[JobKind(kind)]


def stage_spec(kind: JobKind | str, name: str) -> StageSpec:
    for spec in stages_of(kind):
        if spec.name == name:
            return spec
    raise KeyError(f"{kind} jobs have no stage {name!r}")


def next_stage(kind: JobKind | str, name: str) -> StageSpec | None:
    specs = stages_of(kind)
    names = [s.name for s in specs]
    i = names.index(name)
    return specs[i + 1] if i + 1 < len(specs) else None


def job_progress(kind: JobKind | str, stage: str, fraction: float) -> float:
    """The job's progress 0..1 when ``stage`` is ``fraction`` done (earlier stages count in full)."""
    done = 0.0
    for spec in stages_of(kind):
        if spec.name == stage:
            return min(1.0, done + spec.weight * min(max(fraction, 0.0), 1.0))
        done += spec.weight
    raise KeyError(f"{kind} jobs have no stage {stage!r}")
