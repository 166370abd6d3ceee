"""Operators' probes, outside the API prefix (SPEC 3.8).

- ``GET /healthz``: the process answers (liveness); touches nothing else.
- ``GET /readyz``: every dependency a request may need answers (readiness): the
  database, the Redis cache (when the cache is Redis), the broker (when one is set) and
  the storage (writable). ``503`` names what is down, with ``Retry-After``.
- ``GET /metrics``: Prometheus text format (nginx admits loopback only).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from flask import Blueprint, Response, current_app, jsonify
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from sqlalchemy import text

from . import storage
from .errors import error_response
from .extensions import db

bp = Blueprint("health", __name__)
log = logging.getLogger(__name__)

# Seconds each network check may take: a probe must answer before its own timeout.
CHECK_TIMEOUT = 1.0
RETRY_AFTER = "5"


@bp.get("/healthz")
def healthz():
    """Alive: the process can answer. Dependencies are /readyz's business."""
    response = jsonify(status="ok")
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/readyz")
def readyz():
    """Ready: 200 with each check's result, or 503 naming what is down."""
    results = readiness()
    down = {name: reason for name, reason in results.items() if reason not in ("ok", "not used")}
    if down:
        named = "; ".join(f"{name} is down ({reason})" for name, reason in down.items())
        log.warning("not ready: %s", named)
        return error_response(503, f"Not ready: {named}.", [("Retry-After", RETRY_AFTER)])
    response = jsonify(status="ready", checks=results)
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/metrics")
def metrics():
    """Prometheus exposition: this process's registry, or every gunicorn worker's values
    when ``PROMETHEUS_MULTIPROC_DIR`` is set."""
    from prometheus_client import multiprocess

    directory = current_app.extensions.get("vimeo_metrics_multiproc_dir")
    if directory:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=directory)
    else:
        registry = current_app.extensions["vimeo_metrics"].registry
    response = Response(generate_latest(registry), mimetype=None, content_type=CONTENT_TYPE_LATEST)
    response.headers["Cache-Control"] = "no-store"
    return response


# -- checks -----------------------------------------------------------------------------

def readiness() -> dict[str, str]:
    """Each dependency → "ok", "not used", or why it is down (a short phrase, no secrets)."""
    cfg = current_app.config
    checks: dict[str, Callable[[], None] | None] = {
        "database": check_database,
        "cache": check_redis_cache if is_redis_cache(cfg) else None,
        "broker": check_broker if cfg.get("BROKER_URL") else None,
        "storage": check_storage,
    }
    results = {}
    for name, check in checks.items():
        if check is None:
            results[name] = "not used"
            continue
        try:
            check()
            results[name] = "ok"
        except Exception as exc:  # any failure means "not ready"; the reason is reported
            results[name] = _reason(name, exc)
    return results


def _reason(name: str, exc: Exception) -> str:
    # The class name says enough (refused, timed out, permission) without echoing URLs,
    # credentials or storage paths that exception messages may contain.
    what = {"cache": "Redis", "broker": "broker"}.get(name, name)
    return f"{what}: {exc.__class__.__name__}"


def is_redis_cache(cfg) -> bool:
    """Whether Flask-Caching is configured with one of its Redis backends."""
    return "redis" in str(cfg.get("CACHE_TYPE") or "").lower()


def check_database() -> None:
    """``SELECT 1`` on a connection of the app's pool."""
    with db.engine.connect() as conn:
        conn.execute(text("SELECT 1"))


def check_redis_cache() -> None:
    """PING the cache's Redis with a short timeout and no retries."""
    client = _redis_probe_client()
    if not client.ping():
        raise ConnectionError("no PONG")


def _redis_probe_client():
    """A client for probing only: the cache's own has no socket timeouts (a hung Redis
    would hang the probe) and retries with backoff."""
    extensions = current_app.extensions
    client = extensions.get("vimeo_redis_probe")
    if client is None:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        url = current_app.config.get("CACHE_REDIS_URL")
        options = {"socket_timeout": CHECK_TIMEOUT, "socket_connect_timeout": CHECK_TIMEOUT, "retry": Retry(NoBackoff(), 0)}
        if url:
            client = redis.Redis.from_url(url, **options)
        else:
            cfg = current_app.config
            client = redis.Redis(
                host=cfg.get("CACHE_REDIS_HOST", "localhost"),
                port=int(cfg.get("CACHE_REDIS_PORT", 6379)),
                db=int(cfg.get("CACHE_REDIS_DB", 0) or 0),
                password=cfg.get("CACHE_REDIS_PASSWORD"),
                **options,
            )
        extensions["vimeo_redis_probe"] = client
    return client


def check_broker() -> None:
    """Open (and close) a connection to the broker, giving up after CHECK_TIMEOUT."""
    from kombu import Connection

    url = current_app.config["BROKER_URL"]
    options = {"socket_timeout": CHECK_TIMEOUT, "socket_connect_timeout": CHECK_TIMEOUT, "max_retries": 0}
    with Connection(url, connect_timeout=CHECK_TIMEOUT, transport_options=options) as conn:
        conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=CHECK_TIMEOUT)


def check_storage() -> None:
    """Write, fsync and remove a probe file where uploads stream to."""
    storage.current().check()

