"""Celery tasks: one thin task runs any stage (``runner.run_stage``) through its handler
(``handlers.py``); ``celery_app`` is what ``synctalk worker`` starts. A task knows Celery and the
database; a stage function knows neither.
"""
