"""Prometheus metrics and the one log line per request.

``init_app`` gives each app its own metrics (in its own registry, so two apps in one
test process never mix their counts) and hooks them into the request cycle. Under
gunicorn with ``PROMETHEUS_MULTIPROC_DIR`` set, prometheus-client keeps every value in
files in that directory and ``GET /metrics`` adds up all the workers (see health.py and
the ``child_exit`` hook in gunicorn.conf.py).

Labels are bounded: a request is counted under its URL rule
(``/vimeo/api/v1.0/file/<filehash>``), never its raw path, which would carry file hashes
and signed tokens.
"""

from __future__ import annotations

import logging
import os
import time
import weakref

from celery import signals
from flask import Flask, Response, current_app, g, has_app_context, request
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

log = logging.getLogger("vimeo_api.requests")

UNMATCHED = "<unmatched>"
# Endpoints whose success stores content, and the kind they are counted under.
UPLOADS = {
    "api.upload_multipart": "multipart",
    "api.upload_raw": "raw",
    "api.upload_raw_bare": "raw",
    "api.replace_file": "replace",
}
# Endpoints whose 200/206 answer to GET hands out content (and uses a download).
DOWNLOADS = {"api.download": "file", "links.download_version": "version", "links.download_with_token": "token"}

# Each Celery app (one per Flask app) → that app's metrics, for the task signal handlers.
_BY_CELERY: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


class Metrics:
    """Every metric the API exports."""

    def __init__(self, registry: CollectorRegistry):
        self.registry = registry
        self.requests = Counter(
            "vimeo_http_requests", "HTTP requests answered, by method, URL rule and status.",
            ["method", "route", "status"], registry=registry,
        )
        self.duration = Histogram(
            "vimeo_http_request_duration_seconds", "Time to build the answer (not to stream it), by URL rule.",
            ["route"], registry=registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.uploads = Counter(
            "vimeo_uploads", "Content stored: new uploads and replacements.", ["kind"], registry=registry,
        )
        self.upload_bytes = Counter(
            "vimeo_upload_bytes", "Bytes of content stored.", ["kind"], registry=registry,
        )
        self.downloads = Counter(
            "vimeo_downloads", "Answers that hand out content (200/206 to GET), by URL kind and who sends the bytes.",
            ["kind", "delivery"], registry=registry,
        )
        self.download_bytes = Counter(
            "vimeo_download_bytes",
            "Bytes of content the app sent (X-Accel answers are sent by nginx and not counted here).",
            ["kind"], registry=registry,
        )
        self.cache = Counter(
            "vimeo_cache_lookups", "Cache lookups by result (hit or miss).", ["result"], registry=registry,
        )
        self.tasks = Counter(
            "vimeo_task_outcomes", "Celery task runs by task and outcome (success, failure, retry).",
            ["task", "outcome"], registry=registry,
        )
        # Set by the sweep; under gunicorn the latest value of any process wins.
        self.sweep_backlog = Gauge(
            "vimeo_sweep_backlog",
            "What the latest sweep found left undone, by kind: expired files, versions to retire, "
            "released bytes, stale fast-path grants, stale uploads, orphans. Non-zero means tasks were lost or nothing else did it.",
            ["kind"], registry=registry, multiprocess_mode="mostrecent",
        )
        self.fast_downloads = Counter(
            "vimeo_fast_path_downloads",
            "Downloads nginx answered on the fast path, as the sweeps counted them from its log.",
            registry=registry,
        )
        self.edge_bans = Counter(
            "vimeo_edge_bans", "BAN requests to edge caches (EDGE_PURGE_URLS), by outcome (done, failed).",
            ["outcome"], registry=registry,
        )
        self.sweep_failures = Counter(
            "vimeo_sweep_step_failures",
            "Sweep steps that failed (the others ran), by step; the log has each trace.",
            ["step"], registry=registry,
        )
        self.sweep_last = Gauge(
            "vimeo_sweep_last_run_timestamp_seconds", "When the latest sweep finished (Unix time).",
            registry=registry, multiprocess_mode="max",
        )


def init_app(app: Flask) -> Metrics:
    """Create the app's metrics and count every request; log one line for each."""
    # Read here, not at import; prometheus-client itself picked its value class when it
    # was imported (the variable is set before the process starts).
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None
    if directory:
        # Every process with the variable (gunicorn workers, a worker, manage.py) writes
        # its values there as soon as a metric exists.
        os.makedirs(directory, exist_ok=True)
    metrics = Metrics(CollectorRegistry())
    app.extensions["vimeo_metrics"] = metrics
    app.extensions["vimeo_metrics_multiproc_dir"] = directory
    celery_app = app.extensions.get("celery")
    if celery_app is not None:
        _BY_CELERY[celery_app] = metrics
    _connect_task_signals()

    @app.before_request
    def start_timer():
        g.vimeo_started = time.perf_counter()

    @app.after_request
    def count_and_log(response: Response) -> Response:
        observe(metrics, response)
        return response

    return metrics


def current_metrics() -> Metrics | None:
    """The current app's metrics; None outside an app context."""
    return current_app.extensions.get("vimeo_metrics") if has_app_context() else None


def route_of(req) -> str:
    """The URL rule a request matched (bounded, no secrets), or ``<unmatched>``."""
    rule = req.url_rule
    return rule.rule if rule is not None else UNMATCHED


def observe(metrics: Metrics, response: Response) -> None:
    """Count one answered request and write its log line."""
    route = route_of(request)
    status = response.status_code
    elapsed = time.perf_counter() - getattr(g, "vimeo_started", time.perf_counter())
    metrics.requests.labels(request.method, route, str(status)).inc()
    metrics.duration.labels(route).observe(elapsed)
    endpoint = request.endpoint or ""
    sent = _body_bytes(response)
    if endpoint in UPLOADS and status in (200, 201):
        body = response.get_json(silent=True) or {}
        metrics.uploads.labels(UPLOADS[endpoint]).inc()
        metrics.upload_bytes.labels(UPLOADS[endpoint]).inc(int(body.get("size") or 0))
    elif endpoint in DOWNLOADS and request.method == "GET" and status in (200, 206):
        kind = DOWNLOADS[endpoint]
        accel = "X-Accel-Redirect" in response.headers
        metrics.downloads.labels(kind, "nginx" if accel else "app").inc()
        if not accel:
            metrics.download_bytes.labels(kind).inc(sent or 0)
    # Never the path or the query string: they carry file hashes, tokens and passwords.
    log.info(
        "%s %s %s",
        request.method,
        route,
        status,
        extra={
            "request_id": getattr(g, "request_id", None),
            "method": request.method,
            "route": route,
            "status": status,
            "duration_ms": round(elapsed * 1000, 3),
            "bytes": sent,
            "client": request.remote_addr,
        },
    )


def _body_bytes(response: Response) -> int | None:
    """Bytes of body the answer declares (None when it streams without a length)."""
    if request.method == "HEAD" or response.status_code in (204, 304):
        return 0
    return response.content_length


def record_cache(hit: bool) -> None:
    """Count one cache lookup (call it where the cache is read)."""
    metrics = current_metrics()
    if metrics is not None:
        metrics.cache.labels("hit" if hit else "miss").inc()


def record_edge_ban(done: bool) -> None:
    """Count one BAN sent to an edge cache."""
    metrics = current_metrics()
    if metrics is not None:
        metrics.edge_bans.labels("done" if done else "failed").inc()


def record_sweep(report) -> None:
    """Publish what a sweep found to do (``sweep.SweepReport``)."""
    metrics = current_metrics()
    if metrics is None:
        return
    for kind, count in report.counts().items():
        if kind == "fast_downloads":  # work done, not work left
            metrics.fast_downloads.inc(count)
        elif kind == "transfers_finished":  # work done, and no backlog: nginx's log is read whole
            continue
        else:
            metrics.sweep_backlog.labels(kind).set(count)
    for step in report.failed:
        metrics.sweep_failures.labels(step).inc()
    metrics.sweep_last.set(time.time())


# -- Celery task outcomes ---------------------------------------------------------------

def _task_metrics(sender) -> Metrics | None:
    app = getattr(sender, "app", None)
    return _BY_CELERY.get(app) if app is not None else None


def _count_task(sender, outcome: str) -> None:
    metrics = _task_metrics(sender)
    if metrics is not None:
        metrics.tasks.labels(getattr(sender, "name", "unknown"), outcome).inc()


def _on_success(sender=None, **_kwargs):
    _count_task(sender, "success")


def _on_failure(sender=None, **_kwargs):
    _count_task(sender, "failure")


def _on_retry(sender=None, **_kwargs):
    _count_task(sender, "retry")


def _connect_task_signals() -> None:
    """Connect once per process (dispatch_uid), whatever the number of apps."""
    signals.task_success.connect(_on_success, weak=False, dispatch_uid="vimeo_metrics_success")
    signals.task_failure.connect(_on_failure, weak=False, dispatch_uid="vimeo_metrics_failure")
    signals.task_retry.connect(_on_retry, weak=False, dispatch_uid="vimeo_metrics_retry")
