"""The queue: one Celery app, the ``cpu`` and ``gpu`` queues, the stages each job goes through.

The API and the workers both import this (the API only sends tasks by name: it never imports the
worker code, so it stays light). Job state lives in the database, never in Celery results.
"""
