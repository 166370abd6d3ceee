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
    # Where the app keeps the state it makes itself (the installation's token signing
    # key). None: systemd's $STATE_DIRECTORY when the service has one (StateDirectory=),
    # else the instance folder. Never the code's directory in production, which is
    # read-only there (deploy/*.service).
    "STATE_DIR": None,
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
    # Resumable (tus) uploads, vimeo_api/tus.py: the largest whole upload (Tus-Max-Size;
    # creation also refuses, 507, what the free space cannot hold), and the largest body
    # of one request (a chunk; nginx's client_max_body_size for the tus routes).
    "MAX_RESUMABLE_UPLOAD_SIZE": 10 * 1024 * MiB,
    "MAX_RESUMABLE_CHUNK_SIZE": 64 * MiB,
    # Seconds an unfinished upload lives after its last chunk (Upload-Expires); then the
    # sweep removes its bytes and row. A completed one's answer to HEAD (its file's URL
    # and owner token) is kept as long after its completion.
    "RESUMABLE_EXPIRES_IN": 24 * 3600,
    # Running SHA-256 states of uploads kept per process (vimeo_api/resumable.py).
    "RESUMABLE_HASH_STATES": 1024,
    # Bytes a multipart upload's body may carry beyond its file (boundaries, part
    # headers, the option fields): MAX_UPLOAD_SIZE is the file's limit, however it is
    # sent (vimeo_api/uploads.py; nginx.conf allows the same).
    "MULTIPART_OVERHEAD": 64 * 1024,
    # A multipart body may carry small text fields beside the file; the file part itself
    # goes to our own stream (see uploads.py), never to memory. werkzeug also holds each
    # 64 KiB read of the body to this bound while it looks for the boundary, so it must
    # be well above that. Flask's own default (500 kB) is set before these, so this must
    # be a default here, not a setdefault later.
    "MAX_FORM_MEMORY_SIZE": 128 * 1024,
    # Parts one multipart request may have (Flask's default is 1,000): each file part is
    # an open file, and an upload needs the file and three options.
    "MAX_FORM_PARTS": 16,
    # Seconds. DEFAULT applies when the client gives no expiry; MAX caps what it may ask for
    # (uploads and PATCH alike; ``never`` is refused while there is a cap). Anyone may
    # upload, so by default nothing stays longer than 30 days; None or 0 lifts the cap.
    "DEFAULT_EXPIRES_IN": 7 * 24 * 3600,
    "MAX_EXPIRES_IN": 30 * 24 * 3600,
    # Bytes that must stay free on the storage's filesystem: an upload that would leave
    # less is a 507 before its body is read, so the disk never fills (the database, logs
    # and uploads under way need room too). 0: off.
    "STORAGE_MIN_FREE_BYTES": 1024**3,
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
    # A browser (Accept prefers text/html) opening a limited or password-protected file
    # gets a page that names it and uses no download; its Download button makes the
    # counted download (vimeo_api/landing.py). Off: browsers get the bytes directly.
    # Robots and prefetches get that page in either case (vimeo_api/previews.py).
    "LANDING_PAGE": True,
    # Seconds after a counted download of a limited file during which the same client
    # (its address) may fetch the rest with Range requests without using another
    # download; the used-up file's bytes are kept that long. 0: no resuming.
    "RESUME_WINDOW": 900,
    # nginx's log of the transfers it sent for the app (X-Accel-Redirect): bytes sent and
    # whether they all went (nginx.conf's transfers.log), read by the sweep and by
    # GET /file/<filehash>/downloads (vimeo_api/transfer_log.py). None: not read.
    "TRANSFER_LOG": None,
    # GET /file/<filehash>/downloads names each transfer's client address. Off: no
    # address is stored at all (a keyed hash recognises a resuming client).
    "DOWNLOADS_CLIENT_ADDRESS": False,
    # The latest transfers GET /file/<filehash>/downloads lists.
    "DOWNLOADS_LIST_LIMIT": 1000,
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
    # Tests only: while <STORAGE_DIR>/TEST_RESUMABLE_PAUSE exists, a tus chunk pauses
    # (at most this many seconds) after its first MiB, so that a test can kill a worker
    # mid-chunk behind nginx (which hands chunks over at once). Keep it 0.
    "TEST_RESUMABLE_PAUSE": 0,
    # Signed download tokens: a list of keys (at least 32 characters each), the first
    # signs and all verify. Empty: a random key made once in STATE_DIR.
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
    # Bytes uploaded (and replaced) per client address, in the same notation: an amount of
    # bytes per window. Keep it above MAX_UPLOAD_SIZE, or the largest uploads never pass.
    "UPLOAD_BYTES_LIMIT": "1073741824/hour",
    "PASSWORD_RATE_LIMIT": "10/minute",
    # Wrong passwords per client address across all files: each costs a slow hash, and
    # an attacker can make password files of their own (each with its own budget above).
    "PASSWORD_ADDRESS_RATE_LIMIT": "30/minute",
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
    # A request body must deliver bytes at least every BODY_READ_TIMEOUT seconds and,
    # once it has been arriving that long, average BODY_MIN_RATE bytes a second, or it is
    # cut off with 408 (vimeo_api/body_reading.py): on the embedded default, clients
    # trickling their uploads would otherwise hold gunicorn's threads. 0: no limit.
    "BODY_READ_TIMEOUT": 30,
    "BODY_MIN_RATE": 4096,
    # Edge caches in front of the service (a CDN's role; Varnish with deploy/varnish.vcl):
    # a JSON list of URLs each taking a BAN with the Surrogate-Key header naming what to
    # drop (vimeo_api/edge.py). DELETE, replacement, a PATCH, a version's retirement and
    # POST /purge reach them, each edge within EDGE_TIMEOUT seconds; an edge that is down
    # fails nothing (it is logged and counted).
    "EDGE_PURGE_URLS": [],
    "EDGE_TIMEOUT": 2,
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
        # As Flask's tutorial does: the embedded default lives in the instance folder
        # (its database and files are the service's alone).
        os.makedirs(app.instance_path, mode=0o700, exist_ok=True)
        cfg["DATABASE_URL"] = "sqlite:///" + os.path.join(app.instance_path, "vimeo_api.sqlite3")
    if not cfg["STORAGE_DIR"]:
        cfg["STORAGE_DIR"] = os.path.join(app.instance_path, "storage")
    if not cfg["STATE_DIR"]:
        # systemd may list several directories, separated by colons: the first is ours.
        systemd = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
        cfg["STATE_DIR"] = systemd or app.instance_path
    cfg["STATE_DIR"] = os.path.abspath(cfg["STATE_DIR"])
    if cfg["DATABASE_URL"].startswith(("postgresql://", "postgres://")):
        # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3; this project ships psycopg2.
        cfg["DATABASE_URL"] = "postgresql+psycopg2://" + cfg["DATABASE_URL"].split("://", 1)[1]
    cfg["STORAGE_DIR"] = os.path.abspath(cfg["STORAGE_DIR"])
    if cfg["FAST_PATH"] is None:
        cfg["FAST_PATH"] = cfg["DELIVERY"] == "accel"
    cfg["PUBLIC_URL"] = str(cfg["PUBLIC_URL"]).rstrip("/")
    cfg["SQLALCHEMY_DATABASE_URI"] = cfg["DATABASE_URL"]
    cfg.setdefault("SQLALCHEMY_ENGINE_OPTIONS", {"pool_pre_ping": True})
    # werkzeug enforces this while the body streams: 413 before the limit is passed (a
    # multipart body may be MULTIPART_OVERHEAD larger: uploads.UploadRequest).
    cfg["MAX_CONTENT_LENGTH"] = int(cfg["MAX_UPLOAD_SIZE"])
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
