"""The fixtures the whole suite shares, registered by tests/conftest.py through
``pytest_plugins`` (never imported by a test module).

- a fresh app and database per test, on SQLite and on the real local PostgreSQL (each
  run creates its own database and drops it at the end; a server that cannot be reached
  fails the run: nothing is skipped);
- a real gunicorn (``gunicorn_server``), the session's nginx stack (``nginx_stack``) and
  stacks of a test's own (``own_stack``);
- the conformance suite's ``target``: the embedded app on SQLite and PostgreSQL, the
  stack, and the stack with its bytes in an S3 bucket (``stack-s3``: a real
  ``rclone serve s3`` process, deploy/s3server.py, started once per run);
- Redis: a private server to stop and start, or keys of a test's own on the shared one.
"""

from __future__ import annotations

import os
import secrets

import pytest
import redis

from vimeo_api import create_app
from vimeo_api.extensions import db

from . import FAST_PASSWORD_HASH, PG_ADMIN_URL, PUBLIC_URL, SHARED_REDIS
from .database import create_database, drop_database, empty_database, empty_tables, migrate_database
from deploy.s3server import start_rclone

from .services import LiveServer, PrivateRedis
from .stacks import start_stack
from .targets import FlaskTarget

# -- apps and databases ------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_url():
    """A fresh PostgreSQL database for this run, migrated with the project's migrations."""
    url = create_database(PG_ADMIN_URL)
    yield url
    drop_database(PG_ADMIN_URL, url)


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request):
    return request.param


def _backend_of(request) -> str:
    """The test's ``backend`` when it has one (parametrised or not), else SQLite."""
    return request.getfixturevalue("backend") if "backend" in request.fixturenames else "sqlite"


@pytest.fixture
def make_app(tmp_path, request):
    """Build an app on the test's backend; extra settings override the defaults."""
    apps = []

    def factory(backend: str | None = None, **overrides):
        backend = backend or _backend_of(request)
        if backend == "postgresql":
            url = request.getfixturevalue("pg_url")
        else:
            url = f"sqlite:///{tmp_path / 'test.sqlite3'}"
        config = {
            "TESTING": True,
            "DATABASE_URL": url,
            "STORAGE_DIR": str(tmp_path / "storage"),
            "STATE_DIR": str(tmp_path / "state"),
            "PUBLIC_URL": PUBLIC_URL,
            "EMBEDDED_SWEEP_INTERVAL": 0,
            "PASSWORD_HASH_METHOD": FAST_PASSWORD_HASH,
            **overrides,
        }
        app = create_app(config)
        with app.app_context():
            if backend == "sqlite":
                db.create_all()
        apps.append((app, backend))
        return app

    yield factory
    for app, name in apps:
        with app.app_context():
            if name == "postgresql":
                # Through the app's own session: a second connection would wait on its locks.
                empty_tables(db.session)
                db.session.commit()
            db.session.remove()
            db.engine.dispose()


@pytest.fixture
def app(make_app, backend):
    return make_app()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


# -- a real gunicorn -------------------------------------------------------------------

@pytest.fixture
def gunicorn_server(tmp_path, request):
    """Start real gunicorn on a free port against the test's backend; stop it after."""
    servers = []

    def start(workers: int = 4, threads: int = 4, **env_overrides) -> LiveServer:
        if _backend_of(request) == "postgresql":
            db_url = request.getfixturevalue("pg_url")
            empty_database(db_url)  # the run's shared database: start from empty tables, as make_app does
        else:
            db_url = f"sqlite:///{tmp_path / 'live.sqlite3'}"
            migrate_database(db_url)
        server = LiveServer(tmp_path, db_url, str(tmp_path / "live-storage"), workers, threads, **env_overrides)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


# -- nginx in front of gunicorn ----------------------------------------------------------

@pytest.fixture(scope="session")
def nginx_stack(pg_url, tmp_path_factory):
    """The stack for the whole run: nginx (X-Accel, upload offload) → gunicorn → PostgreSQL."""
    stack = start_stack(tmp_path_factory.mktemp("stack"), pg_url)
    yield stack
    stack.stop()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """The run's S3 server: ``rclone serve s3`` (checks SigV4 signatures, presigned URLs
    included) over a directory of its own; deployments use key prefixes of their own."""
    root = tmp_path_factory.mktemp("s3")
    server = start_rclone(root / "data", log_path=root / "rclone.log")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def nginx_s3_stack(pg_url, s3_server, tmp_path_factory):
    """The stack with its bytes in the bucket, for the whole run: nginx (presigned GETs
    of the bucket, its content cache, the offload to local scratch) → gunicorn."""
    stack = start_stack(tmp_path_factory.mktemp("stack-s3"), pg_url, s3=s3_server)
    yield stack
    stack.stop()


@pytest.fixture
def own_stack(pg_url, tmp_path):
    """Start a stack for this test alone (one that the test may break, or configure):
    ``own_stack(**options)`` takes ``start_stack``'s options and ``VIMEO_*`` settings."""
    started = []

    def start(**options):
        s = start_stack(tmp_path / f"stack{len(started)}", pg_url, **options)
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()
        s.reset()


@pytest.fixture
def stack_target(nginx_stack):
    """The conformance suite's "stack" target: clean tables and storage for each test."""
    nginx_stack.reset()
    t = nginx_stack.target()
    yield t
    t.close()
    nginx_stack.reset()


@pytest.fixture
def stack_s3_target(nginx_s3_stack):
    """The conformance suite's "stack-s3" target: clean tables and bucket for each test."""
    nginx_s3_stack.reset()
    t = nginx_s3_stack.target("stack-s3")
    yield t
    t.close()
    nginx_s3_stack.reset()


@pytest.fixture(params=["sqlite", "postgresql", "stack", "stack-s3"])
def target(request, make_app):
    """The conformance suite's deployment: the embedded app on SQLite and on PostgreSQL,
    the stack, nginx (X-Accel, upload offload) in front of gunicorn on PostgreSQL, and the
    same stack with its bytes in an S3 bucket (rclone)."""
    if request.param == "stack":
        t = request.getfixturevalue("stack_target")
    elif request.param == "stack-s3":
        t = request.getfixturevalue("stack_s3_target")
    else:
        t = FlaskTarget(request.param, make_app(backend=request.param))
    yield t
    t.close()


# -- Redis -------------------------------------------------------------------------------

@pytest.fixture
def private_redis(tmp_path):
    """A redis-server for one test, which it may stop, start, freeze and thaw."""
    server = PrivateRedis(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def shared_redis_prefix():
    """A key prefix of this test's own on the shared Redis; its keys go afterwards."""
    prefix = f"vimeo_test_{os.getpid()}_{secrets.token_hex(4)}:"
    yield prefix
    for database in (1, 2):
        client = redis.Redis.from_url(f"{SHARED_REDIS}/{database}")
        # The limits library puts its own "LIMITS:LIMITER/" before our prefix.
        keys = list(client.scan_iter(match="*" + prefix.rstrip(":") + "*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()
