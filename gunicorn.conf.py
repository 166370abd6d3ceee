"""gunicorn settings, each overridable from the environment (``GUNICORN_*``)."""

import os

bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("GUNICORN_WORKERS", "4"))


def _limit_malloc_arenas(count: int) -> None:
    """glibc gives every thread that allocates under contention an arena of its own (up to
    eight per core), and each keeps what it freed: a gthread worker's RSS grows by MiBs
    for nothing. Set in the master, before any worker or thread exists (workers inherit
    it); Python's own small-object allocator is not affected, and the GIL leaves little to
    contend for. Measured with `python -m bench.s3 --workers 4 --load 10` (on S3; see
    deploy/S3-NOTES.md), the largest worker at rest after the load: 100.5–102 MiB with
    glibc's default, 100.5 with two arenas, 97.7–97.9 with one."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(-8, count)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass  # not glibc: nothing to limit


_limit_malloc_arenas(int(os.environ.get("GUNICORN_MALLOC_ARENAS", "1")))
# gthread, answering gunicorn's own errors as the API's JSON and accepting a connection
# only with a thread free for it (vimeo_api/serving.py). Another class (sync, gthread)
# works, with gunicorn's HTML error pages.
worker_class = os.environ.get("GUNICORN_WORKER_CLASS", "vimeo_api.serving.ThreadWorker")
threads = int(os.environ.get("GUNICORN_THREADS", "4"))
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "120"))
keepalive = int(os.environ.get("GUNICORN_KEEPALIVE", "5"))
# The app writes one JSON line per request itself (vimeo_api/observability.py: request id,
# route, status, duration, bytes, client), and nginx logs every request in the stack, so
# gunicorn's own access line is off unless asked for: formatting it cost about a tenth of
# the CPU of a small answer (PERFORMANCE.md). Query strings may carry ?password=: when on,
# it records the path only.
accesslog = os.environ.get("GUNICORN_ACCESSLOG") or None
access_log_format = '%(h)s "%(m)s %(U)s" %(s)s %(B)s %(L)ss %({x-request-id}o)s'
# The access log without capabilities (a filehash, version id or token in a path is cut
# to its first characters) or control characters (vimeo_api/serving.py).
logger_class = "vimeo_api.serving.AccessLogger"
# gunicorn's longest request line (its default is 4094): nginx, in front in the stack,
# refuses longer lines itself (its 8k header buffers), so both answer alike.
limit_request_line = 8190
errorlog = "-"
loglevel = os.environ.get("GUNICORN_LOGLEVEL", "info")
# Which peers may set X-Forwarded-* (nginx, on loopback in the stack).
forwarded_allow_ips = os.environ.get("GUNICORN_FORWARDED_ALLOW_IPS", "127.0.0.1,::1")
# gunicorn's control socket defaults to one path per user ($HOME/.gunicorn/gunicorn.ctl):
# the stack, the tests and the benchmarks run several gunicorns at once, which would fight
# over it. Off unless a path is given.
if os.environ.get("GUNICORN_CONTROL_SOCKET"):
    control_socket = os.environ["GUNICORN_CONTROL_SOCKET"]
else:
    control_socket_disable = True


def post_worker_init(worker):
    """On the embedded default each worker sweeps in a thread (no Celery beat there); on
    several nodes each worker keeps its node's share in a thread: its nginx's downloads
    counted, its outdated grants removed."""
    from vimeo_api.sweep import start_embedded_sweeper, start_node_upkeep

    start_embedded_sweeper(worker.wsgi)
    start_node_upkeep(worker.wsgi)


# Prometheus multiprocess mode (vimeo_api/health.py): with PROMETHEUS_MULTIPROC_DIR set,
# every worker writes its metrics to files there and /metrics adds them up.
def on_starting(server):
    """Start from an empty metrics directory: files left by an earlier run would be
    added to this one's counts."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        os.makedirs(directory, exist_ok=True)
        for name in os.listdir(directory):
            if name.endswith(".db"):
                os.unlink(os.path.join(directory, name))


def child_exit(server, worker):
    """A dead worker's live gauges must not be reported (its counters are kept)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
