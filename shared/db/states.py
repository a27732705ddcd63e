"""Job states and stages shared by the API, the workers and the dashboard."""

from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    """Where a job is in its life. The current stage and progress are separate fields."""

    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    canceled = "canceled"

    @property
    def is_final(self) -> bool:
        return self in (JobState.succeeded, JobState.failed, JobState.canceled)


class JobKind(StrEnum):
    """The job-like resources: a subject (ingest -> preprocess -> train) and a render."""

    subject = "subject"
    render = "render"


# Allowed transitions: anything else is a bug (a redelivered task must not resurrect a finished job).
TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.queued: frozenset({JobState.running, JobState.canceled, JobState.failed}),
    JobState.running: frozenset({JobState.queued, JobState.succeeded, JobState.failed, JobState.canceled}),
    JobState.succeeded: frozenset(),
    JobState.failed: frozenset(),
    JobState.canceled: frozenset(),
}


def can_transition(old: JobState, new: JobState) -> bool:
    return new in TRANSITIONS[old]
