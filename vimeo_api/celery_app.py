"""The app's Celery instance (Flask's ``celery_init_app`` pattern): tasks run inside an
app context; the worker and beat start from ``celery_worker.py``."""

from __future__ import annotations

from celery import Celery, Task
from flask import Flask


def celery_init_app(app: Flask) -> Celery:
    """Create the app's Celery instance from ``app.config["CELERY"]`` and register the
    tasks; with no broker configured the tasks run eagerly in-process."""

    class FlaskTask(Task):
        def __call__(self, *args, **kwargs):
            with app.app_context():
                return self.run(*args, **kwargs)

    celery_app = Celery(app.name, task_cls=FlaskTask)
    celery_app.config_from_object(app.config["CELERY"])
    interval = float(app.config["SWEEP_INTERVAL"])
    orphan_interval = float(app.config["ORPHAN_SWEEP_INTERVAL"])
    # A sweep nobody ran within its interval is superseded by the next one: with the
    # workers down, beat must not pile up a backlog of identical sweeps.
    celery_app.conf.beat_schedule = {
        "sweep": {
            "task": "vimeo_api.tasks.sweep_task",
            "schedule": interval,
            "kwargs": {"orphans": False},
            "options": {"expires": interval},
        },
        "sweep-with-orphan-scan": {
            "task": "vimeo_api.tasks.sweep_task",
            "schedule": orphan_interval,
            "kwargs": {"orphans": True},
            "options": {"expires": orphan_interval},
        },
    }
    celery_app.set_default()
    app.extensions["celery"] = celery_app
    # Importing the module registers its @shared_task functions with this app.
    from . import tasks  # noqa: F401

    return celery_app
