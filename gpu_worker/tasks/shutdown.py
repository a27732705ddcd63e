"""A worker asked to stop (SIGTERM: Kubernetes evicting the pod, a deploy, ``docker stop``) hands its
running stage back instead of finishing it, which may take hours.

Celery's main process receives the signal and starts a warm shutdown; the stage runs in a pool child,
which Celery leaves alone. ``forward_to_children`` (called on ``worker_shutting_down`` in the main
process) sends the children ``SIGNAL``; ``install`` (called in each child at start) makes that signal
set ``REQUESTED``. The running stage sees it at its next progress report: training checkpoints first,
then the stage is queued again for another worker (shared/jobs/lifecycle.hand_back) and the task ends,
so the warm shutdown completes within seconds.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from pathlib import Path

log = logging.getLogger(__name__)
REQUESTED = threading.Event()
SIGNAL = signal.SIGUSR2  # SIGUSR1 is billiard's soft time limit; SIGTERM would kill a child outright


def install() -> None:
    """In a process that runs stages: the hand-back signal sets ``REQUESTED``."""
    signal.signal(SIGNAL, lambda _signum, _frame: REQUESTED.set())


def request() -> None:
    REQUESTED.set()


def children(pid: int | None = None) -> list[int]:
    """Direct child processes of ``pid`` (this process), from /proc (Linux; [] elsewhere)."""
    pid = os.getpid() if pid is None else pid
    found = []
    for entry in Path("/proc").glob("[0-9]*/stat"):
        try:
            # "pid (comm) state ppid ...": comm may hold spaces or parentheses, so split after its end
            fields = entry.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            found.append(int(entry.parent.name))
    return found


def forward_to_children() -> None:
    """In the worker's main process: stages running here (a solo pool) and in the pool's children stop
    at their next report and hand their stage back."""
    REQUESTED.set()
    for child in children():
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, SIGNAL)
    log.warning("shutting down: running stages are checkpointed and handed back to the queue")
