"""Celery entry point: ``celery -A celery_worker worker`` / ``celery -A celery_worker beat``."""

from vimeo_api import create_app

flask_app = create_app(migrations=False)
celery_app = flask_app.extensions["celery"]
