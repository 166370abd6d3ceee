"""Celery bound to the Flask app: tasks run inside an app context (Flask's pattern)."""

from __future__ import annotations

from celery import Celery, Task
from flask import Flask


def celery_init_app(app: Flask) -> Celery:
    class FlaskTask(Task):
        def __call__(self, *args, **kwargs):
            with app.app_context():
                return self.run(*args, **kwargs)

    celery_app = Celery(app.name, task_cls=FlaskTask)
    celery_app.config_from_object(app.config["CELERY"])
    celery_app.conf.beat_schedule = {
        "sweep": {"task": "vimeo_api.tasks.sweep_task", "schedule": float(app.config["SWEEP_INTERVAL"])},
    }
    celery_app.set_default()
    app.extensions["celery"] = celery_app
    # Importing the module registers its @shared_task functions with this app.
    from . import tasks  # noqa: F401

    return celery_app
