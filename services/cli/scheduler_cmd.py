"""``synctalk scheduler``: the one background process of a deployment (shared/jobs/scheduler.py).

It re-sends queued stages the broker lost, reaps stages whose worker died, delivers webhooks, deletes
stored files of deleted subjects and prunes old rows. Run one per deployment (a second one stands by:
only the holder of the database lease acts); ``synctalk serve`` starts it with the rest.
"""

from __future__ import annotations

import logging
import signal

import click


@click.command("scheduler")
def scheduler() -> None:
    """Reap lost stages, re-send lost tasks, deliver webhooks, delete files and prune (one per deployment)."""
    from shared import telemetry
    from shared.jobs.scheduler import build
    from shared.settings import get_settings

    settings = get_settings()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    telemetry.configure_logging(settings)  # JSON lines when SYNCTALK_LOG_FORMAT=json
    telemetry.setup(settings, "synctalk-scheduler")  # its sends' spans, when an OTLP endpoint is set
    sched = build(settings)

    def _stop(_signum, _frame) -> None:  # SIGTERM/SIGINT: finish the pass, give the lease up, exit
        sched.stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    click.echo(f"synctalk scheduler {sched.owner}: every {sched.every:g} s")
    sched.run()
