"""WSGI entry point for gunicorn: ``gunicorn -c gunicorn.conf.py vimeo_api.wsgi:app``."""

from . import create_app

app = create_app(migrations=False)
