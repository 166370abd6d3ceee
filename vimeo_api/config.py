"""Configuration: defaults in code, overridden by ``VIMEO_*`` environment variables,
overridden by the ``test_config`` mapping a test passes to ``create_app``."""

from __future__ import annotations

import os

MiB = 1024 * 1024

DEFAULTS: dict[str, object] = {
    # Where metadata lives. None means SQLite in the instance folder (the embedded default).
    "DATABASE_URL": None,
    # Where bytes live. None means ``<instance>/storage``.
    "STORAGE_DIR": None,
    # Bytes in an S3-compatible bucket instead: ``s3://bucket/prefix`` (storage_s3.py).
    # STORAGE_DIR is then the node's local scratch space (nginx's upload bodies, the
    # fast-path counting's bookmark). None: the local directory holds the bytes.
    "STORAGE_URL": None,
    # The store's endpoint (None: AWS), region, and keys (None: the standard AWS
    # environment variables, config files or instance role). No secret has a default.
    "S3_ENDPOINT_URL": None,
    "S3_REGION": None,
    "S3_ACCESS_KEY_ID": None,
    "S3_SECRET_ACCESS_KEY": None,
    # Every call to the store is bounded: seconds to connect, to wait for an answer, and
    # attempts in all (botocore's standard retries).
    "S3_CONNECT_TIMEOUT": 3,
    "S3_READ_TIMEOUT": 10,
    "S3_MAX_ATTEMPTS": 3,
    # While moving from local disk to a bucket (manage.py storage migrate): blobs the
    # bucket does not hold yet are read from STORAGE_DIR, so no read fails (README).
    "STORAGE_LOCAL_FALLBACK": False,
    # Absolute base of the URLs handed out. Client headers (Host, X-Forwarded-*) are never
    # trusted for it: see README "Public URL".
    "PUBLIC_URL": "http://127.0.0.1:8000",
    "MAX_UPLOAD_SIZE": 16 * MiB,
    # Seconds. DEFAULT applies when the client gives no expiry; MAX caps what it may ask for
    # (None: no cap, and ``never`` is allowed).
    "DEFAULT_EXPIRES_IN": 7 * 24 * 3600,
    "MAX_EXPIRES_IN": None,
    # Bytes of a file stay on disk this long after it becomes gone, so that a transfer
    # nginx has just started is not cut short (the original product used 30 s).
    "DELETE_GRACE_SECONDS": 30,
    # How often the embedded default sweeps (expired files, released bytes, stale temp
    # files) without a Celery beat. 0 disables the in-process sweeper (the stack uses beat).
    "EMBEDDED_SWEEP_INTERVAL": 10,
    # How often Celery beat runs the sweep in the stack.
    "SWEEP_INTERVAL": 60,
    # How often a sweep also scans the storage directory for bytes no row knows (it reads
    # every stored file's name: about 6 s per 100,000 files, see PERFORMANCE.md).
    "ORPHAN_SWEEP_INTERVAL": 3600,
    "SWEEP_BATCH_SIZE": 500,
    # Temporary upload files older than this are orphans of a killed process.
    "STALE_UPLOAD_SECONDS": 6 * 3600,
    # "app": the app sends the bytes (embedded default); "accel": X-Accel-Redirect to nginx.
    "DELIVERY": "app",
    # Raw PUT uploads whose body nginx already wrote to <STORAGE_DIR>/nginx-body/ are
    # renamed into place instead of copied (the stack; see vimeo_api/offload.py).
    "UPLOAD_OFFLOAD": False,
    # nginx answers hot downloads of public files and published versions itself, from
    # grants the app makes (vimeo_api/grants.py, nginx.conf's fast path). None: on
    # whenever nginx sends the bytes (DELIVERY "accel").
    "FAST_PATH": None,
    # nginx's log of the downloads it answered on the fast path (nginx.conf's
    # fast-downloads.log); each sweep adds them to the files' counts (fastcount.py).
    # None: they are not counted.
    "FAST_PATH_LOG": None,
    # 0: one machine, whose sweep counts FAST_PATH_LOG. N > 0: several nodes, each with
    # its own nginx, log and grants: every node's gunicorn counts its own log and removes
    # the grants other nodes' changes outdated, every N seconds (sweep.start_node_upkeep);
    # the sweep, which runs on a worker machine, counts nothing.
    "NODE_UPKEEP_INTERVAL": 0,
    # werkzeug.security method for file passwords (salted, slow).
    "PASSWORD_HASH_METHOD": "scrypt",
    # Seconds a right password is remembered per file (under an HMAC in the cache), so
    # repeated downloads with it skip the slow hash; 0 computes it on every request.
    "PASSWORD_CACHE_TTL": 300,
    # Celery: no broker means tasks run eagerly in-process (embedded default).
    "BROKER_URL": None,
    # Seconds a request may wait on the broker (connect, then each reply) when it queues
    # a deletion after committing. The database already records the intent and the sweep
    # finishes it, so a broker that is down or hung must cost a download little time.
    "BROKER_TIMEOUT": 1,
    # After a failed enqueue a process leaves the broker alone this many seconds (the
    # sweep does that work meanwhile), so an outage does not slow every request.
    "BROKER_RETRY_AFTER": 10,
    # Redis redelivers a message not acknowledged within this many seconds: that is how
    # the deletion of a worker killed mid-task completes. A release task waits out its
    # countdown unacknowledged, so this must exceed DELETE_GRACE_SECONDS plus the longest
    # task run, or live workers get duplicates. None: DELETE_GRACE_SECONDS + 300.
    "BROKER_VISIBILITY_TIMEOUT": None,
    # Tests only: seconds release_blob_task waits between deleting a blob's row and
    # unlinking its bytes, so a test can kill a worker inside a deletion. Keep it 0.
    "TEST_RELEASE_DELAY": 0,
    # Signed download tokens: a list of keys, the first signs and all verify. Empty: a
    # random key generated once in the instance folder (set real keys in production).
    "TOKEN_SIGNING_KEYS": [],
    "TOKEN_DEFAULT_EXPIRES_IN": 300,
    "TOKEN_MAX_EXPIRES_IN": 86400,
    # Flask-Caching: in-process on the embedded default, RedisCache in the stack. It holds
    # file metadata and 404s (vimeo_api/metacache.py), never a decision to send bytes.
    "CACHE_TYPE": "SimpleCache",
    "CACHE_REDIS_URL": None,
    # Keys are prefixed, so `manage.py cache clear` deletes ours only (unprefixed, Flask-
    # Caching's clear() would FLUSHDB a Redis database that may be shared).
    "CACHE_KEY_PREFIX": "vimeo:",
    # Items an in-process cache keeps before it prunes (Flask-Caching's default is 500).
    # Past it every write sorts the whole cache to prune (cachelib), so not much more.
    "CACHE_THRESHOLD": 2000,
    # Seconds a file's metadata, and an unknown hash's 404, stay cached. Changes invalidate
    # at once; these only bound memory (and staleness if an invalidation was lost).
    "CACHE_META_TTL": 300,
    "CACHE_NOT_FOUND_TTL": 60,
    # Per-file epoch keys (metacache.py) outlive the entries that carry them.
    "CACHE_EPOCH_TTL": 900,
    # Seconds to wait on Redis before answering uncached, and to leave it alone after a
    # failure (one slow request per period during an outage, not every request).
    "CACHE_SOCKET_TIMEOUT": 0.2,
    "CACHE_RETRY_AFTER": 5,
    # How long GET /purge/<purge_id> can tell a purge's status.
    "PURGE_RECORD_TTL": 86400,
    # Rate limits (vimeo_api/limits.py), in Flask-Limiter's notation. Uploads per client
    # address (room for scripted use); wrong passwords per file and client address.
    "UPLOAD_RATE_LIMIT": "600/minute",
    "PASSWORD_RATE_LIMIT": "10/minute",
    # Where the counts live: memory:// (per process) on the embedded default, Redis in the
    # stack (redis://127.0.0.1:6379/2).
    "RATELIMIT_STORAGE_URI": "memory://",
    "RATELIMIT_STRATEGY": "moving-window",
    "RATELIMIT_KEY_PREFIX": "vimeo",
    "RATELIMIT_HEADERS_ENABLED": True,
    # Redis down: count in-process instead, and never answer 500 for a limit.
    "RATELIMIT_SWALLOW_ERRORS": True,
    "RATELIMIT_IN_MEMORY_FALLBACK_ENABLED": True,
    # Proxies in front of the app whose X-Forwarded-For is believed for the client
    # address: 0 on the embedded default, 1 (nginx) in the stack. Never more than are
    # really there: a client could then choose the address it is counted under.
    "TRUSTED_PROXY_COUNT": 0,
    "LOG_LEVEL": "INFO",
}


def load(app, test_config: dict | None = None) -> None:
    """Fill ``app.config``: code defaults, then the environment, then ``test_config``."""
    app.config.from_mapping(DEFAULTS)
    app.config.from_prefixed_env("VIMEO")
    if test_config:
        app.config.from_mapping(test_config)
    _derive(app)


def _derive(app) -> None:
    """Turn the project's settings into the ones Flask and its extensions read."""
    cfg = app.config
    if not cfg["DATABASE_URL"]:
        # As Flask's tutorial does: the embedded default lives in the instance folder.
        os.makedirs(app.instance_path, exist_ok=True)
        cfg["DATABASE_URL"] = "sqlite:///" + os.path.join(app.instance_path, "vimeo_api.sqlite3")
    if not cfg["STORAGE_DIR"]:
        cfg["STORAGE_DIR"] = os.path.join(app.instance_path, "storage")
    if cfg["DATABASE_URL"].startswith(("postgresql://", "postgres://")):
        # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3; this project ships psycopg2.
        cfg["DATABASE_URL"] = "postgresql+psycopg2://" + cfg["DATABASE_URL"].split("://", 1)[1]
    cfg["STORAGE_DIR"] = os.path.abspath(cfg["STORAGE_DIR"])
    if cfg["FAST_PATH"] is None:
        cfg["FAST_PATH"] = cfg["DELIVERY"] == "accel"
    cfg["PUBLIC_URL"] = str(cfg["PUBLIC_URL"]).rstrip("/")
    cfg["SQLALCHEMY_DATABASE_URI"] = cfg["DATABASE_URL"]
    cfg.setdefault("SQLALCHEMY_ENGINE_OPTIONS", {"pool_pre_ping": True})
    # werkzeug enforces this while the body streams: 413 before the limit is passed.
    cfg["MAX_CONTENT_LENGTH"] = int(cfg["MAX_UPLOAD_SIZE"])
    # A multipart body may carry small text fields beside the file; the file part itself
    # goes to our own stream (see uploads.py), never to memory.
    cfg.setdefault("MAX_FORM_MEMORY_SIZE", 64 * 1024)
    cfg.setdefault("JSON_SORT_KEYS", False)
    cfg["CELERY"] = celery_settings(cfg)
    _redis_timeouts(cfg)


def _redis_timeouts(cfg) -> None:
    """Short socket timeouts and one retry for the cache's and the limiter's Redis: a Redis
    that is down or hung must cost a request a fraction of a second, not redis-py's
    default of blocking and retrying with backoff."""
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    timeout = float(cfg["CACHE_SOCKET_TIMEOUT"])
    # One retry: a pooled connection that Redis closed (a restart) reconnects at once.
    options = {"socket_timeout": timeout, "socket_connect_timeout": timeout, "retry": Retry(NoBackoff(), 1)}
    if "redis" in str(cfg.get("CACHE_TYPE") or "").lower():
        cfg["CACHE_OPTIONS"] = {**options, **(cfg.get("CACHE_OPTIONS") or {})}
    if str(cfg.get("RATELIMIT_STORAGE_URI") or "").startswith(("redis://", "rediss://", "redis+unix://")):
        cfg["RATELIMIT_STORAGE_OPTIONS"] = {**options, **(cfg.get("RATELIMIT_STORAGE_OPTIONS") or {})}


def celery_settings(cfg) -> dict:
    """Celery's settings, derived from the project's (``CELERY_OVERRIDES`` wins)."""
    broker = cfg["BROKER_URL"]
    timeout = float(cfg["BROKER_TIMEOUT"])
    settings = {
        "broker_url": broker or "memory://",
        "task_always_eager": not broker,
        "task_eager_propagates": True,
        "task_ignore_result": True,
        "task_acks_late": True,
        # A pool process killed mid-task requeues its message instead of acking it.
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        # A task whose message can no longer be acknowledged (connection to the broker
        # lost) is cancelled and redelivered rather than finished twice; Celery 6's default.
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "broker_connection_timeout": timeout,
        "broker_connection_retry_on_startup": True,
        # A worker waits for the broker however long an outage lasts (Celery gives up
        # after 100 attempts by default and the worker exits).
        "broker_connection_max_retries": None,
        # Publishing retries once, quickly: the caller is a request (see BROKER_TIMEOUT).
        "task_publish_retry_policy": {"max_retries": 1, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.2},
        "timezone": "UTC",
    }
    if broker and broker.startswith(("redis://", "rediss://", "redis+socket://")):
        visibility = cfg["BROKER_VISIBILITY_TIMEOUT"]
        if visibility is None:
            visibility = int(cfg["DELETE_GRACE_SECONDS"]) + 300
        settings["broker_transport_options"] = {
            "visibility_timeout": visibility,
            # How often a worker looks for messages a dead worker left unacknowledged;
            # kombu's default scans every 10 × 10 s, long beside a short visibility timeout.
            "unacked_restore_interval": max(1, min(10, int(visibility) // 4)),
            "unacked_restore_throttle": 1,
            # Without socket timeouts a hung Redis (accepting, never answering) blocks a
            # publish, and so the request making it, forever.
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            # Bounds the reconnection kombu attempts before each publish (default: forever).
            "max_retries": 1,
            "interval_start": 0,
            "interval_step": 0.2,
            "interval_max": 0.5,
        }
    settings.update(cfg.get("CELERY_OVERRIDES") or {})
    return settings
