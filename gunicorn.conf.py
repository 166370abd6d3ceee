"""gunicorn settings, each overridable from the environment (``GUNICORN_*``)."""

import os

bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("GUNICORN_WORKERS", "4"))
worker_class = os.environ.get("GUNICORN_WORKER_CLASS", "gthread")
threads = int(os.environ.get("GUNICORN_THREADS", "4"))
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "120"))
keepalive = int(os.environ.get("GUNICORN_KEEPALIVE", "5"))
# Query strings may carry ?password=: the access log records the path only.
accesslog = os.environ.get("GUNICORN_ACCESSLOG", "-")
access_log_format = '%(h)s "%(m)s %(U)s" %(s)s %(B)s %(L)ss %({x-request-id}o)s'
errorlog = "-"
loglevel = os.environ.get("GUNICORN_LOGLEVEL", "info")


def post_worker_init(worker):
    """On the embedded default each worker sweeps in a thread (no Celery beat there)."""
    from vimeo_api.sweep import start_embedded_sweeper

    start_embedded_sweeper(worker.wsgi)
