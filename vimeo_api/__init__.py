"""vimeo_api: a file drop and delivery API.

``create_app`` only wires: configuration, extensions, blueprints, error handlers and
commands. Nothing connects, migrates or reads files at import or in the factory.
"""

from __future__ import annotations

import os
import re
import uuid

from flask import Flask, g, request
from sqlalchemy import event

from . import body_reading, config, delivery, edge, grants, limits, logs, metacache, observability, password_cache, queue, resumable, storage, urls
from .celery_app import celery_init_app
from .errors import register_error_handlers
from .extensions import cache, db
from .uploads import UploadRequest

MIGRATIONS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "migrations")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


def create_app(test_config: dict | None = None, *, migrations: bool = True) -> Flask:
    """``migrations=False`` for processes that only serve (gunicorn and Celery workers):
    Flask-Migrate brings alembic and mako, about 12 MiB per process, for the ``db``
    commands alone."""
    app = Flask(__name__, instance_relative_config=True)
    config.load(app, test_config)
    app.request_class = UploadRequest
    register_extensions(app, migrations=migrations)
    register_blueprints(app)
    # A store that does not answer is a 503 with Retry-After, as a database that is down.
    register_error_handlers(app, unavailable={storage.StorageUnavailable: "The storage is unavailable; retry shortly."})
    register_request_hooks(app)
    register_commands(app)
    return app


def register_extensions(app: Flask, *, migrations: bool = True) -> None:
    logs.init_app(app)
    db.init_app(app)
    if migrations:
        from flask_migrate import Migrate

        Migrate(app, db, directory=MIGRATIONS)
    cache.init_app(app)
    # The backends STORAGE_URL may name, by scheme (no URL: the local directory).
    storage.init_app(app, {"s3": _s3_storage})
    delivery.init_app(app)
    # The domain's listeners: the metadata cache, nginx's grants, the edge caches in
    # front and the task queue.
    metacache.init_app(app)
    password_cache.init_app(app)
    grants.init_app(app)
    edge.init_app(app)
    queue.init_app(app)
    limits.init_app(app)
    # Unfinished tus uploads: files beside the blobs, or multipart uploads in the bucket.
    resumable.init_app(app, {"s3": _s3_resumable_storage})
    # Request bodies that stall or trickle are cut off (the embedded default's threads).
    body_reading.init_app(app)
    celery_init_app(app)
    observability.init_app(app)
    if app.config["SQLALCHEMY_DATABASE_URI"].startswith("sqlite"):
        with app.app_context():
            event.listen(db.engine, "connect", _sqlite_pragmas)
            event.listen(db.engine, "connect", _sqlite_private(db.engine.url.database))


def register_blueprints(app: Flask) -> None:
    from . import api, fastpath, health, links, openapi, operators, tus

    app.register_blueprint(api.bp)
    app.register_blueprint(tus.bp)
    tus.init_app(app)
    app.register_blueprint(links.bp)
    app.register_blueprint(operators.bp)
    app.register_blueprint(health.bp)
    app.register_blueprint(openapi.bp)
    if app.config["FAST_PATH"]:
        # nginx's grant subrequest (internal: nginx never lets a client reach it).
        app.register_blueprint(fastpath.bp)


def register_request_hooks(app: Flask) -> None:
    @app.before_request
    def assign_request_id():
        # nginx passes its $request_id; anything else gets a fresh one.
        given = request.headers.get("X-Request-Id", "")
        g.request_id = given if _REQUEST_ID.match(given) else uuid.uuid4().hex

    @app.after_request
    def echo_request_id(response):
        response.headers.setdefault("X-Request-Id", getattr(g, "request_id", ""))
        return response

    # Redirects point at PUBLIC_URL, never at the request's Host.
    urls.init_app(app)


def register_commands(app: Flask) -> None:
    from .cli import cache_cli, files_cli, stats_command, storage_cli, tokens_cli, uploads_cli

    app.cli.add_command(files_cli)
    app.cli.add_command(uploads_cli)
    app.cli.add_command(storage_cli)
    app.cli.add_command(tokens_cli)
    app.cli.add_command(stats_command)
    app.cli.add_command(cache_cli)


def _sqlite_private(path: str | None):
    """A connect hook that keeps the SQLite database readable by the service alone: it
    holds password hashes and every file's capability URL. SQLite creates its -wal and
    -shm files with the database's mode, and ``manage.py db upgrade`` may have created
    the database under a permissive umask."""

    def private(_dbapi_connection, _record) -> None:
        if not path or path == ":memory:":
            return
        for name in (path, path + "-wal", path + "-shm"):
            try:
                if os.stat(name).st_mode & 0o077:
                    os.chmod(name, 0o600)
            except FileNotFoundError:
                pass

    return private


def _s3_storage(settings):
    """The S3 backend, imported only when STORAGE_URL names a bucket: boto3 and botocore
    cost every process of a local-disk deployment about 10 MiB for nothing."""
    from .storage_s3 import S3Storage

    return S3Storage.from_config(settings)


def _s3_resumable_storage(store, locks):
    """tus uploads as multipart uploads in the bucket (imported with the S3 backend)."""
    from .resumable_s3 import S3ResumableStorage

    return S3ResumableStorage(store, locks)


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    """WAL lets downloads read while an upload writes; the busy timeout makes concurrent
    writers wait for the lock instead of failing."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=15000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()
