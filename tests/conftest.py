"""Fixtures: a fresh app and database per test, on SQLite and on PostgreSQL.

PostgreSQL is the real local server (``VIMEO_TEST_PG_ADMIN_URL``, default the local
``postgres`` database); each run creates its own database and drops it at the end. A
server that cannot be reached fails the run: nothing is skipped.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from deploy.stack import free_port, gunicorn_command, spawn, stop
from vimeo_api import create_app
from vimeo_api.extensions import db

# The "stack" target's fixtures (real nginx and gunicorn, started once per session).
from stack.harness import nginx_stack, stack_target  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN_URL = os.environ.get("VIMEO_TEST_PG_ADMIN_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")
FAST_PASSWORD_HASH = "pbkdf2:sha256:1000"  # the slow default is exercised in test_security.py


def _admin_engine():
    return create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")


@pytest.fixture(scope="session")
def pg_url():
    """A fresh PostgreSQL database for this run, migrated with the project's migrations."""
    name = f"vimeo_test_{os.getpid()}_{secrets.token_hex(3)}"
    admin = _admin_engine()
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    migrate_database(url)
    yield url
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def migrate_database(url: str) -> None:
    subprocess.run(
        [sys.executable, "manage.py", "db", "upgrade"],
        cwd=ROOT,
        env={**os.environ, "VIMEO_DATABASE_URL": url},
        check=True,
        capture_output=True,
    )


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request):
    return request.param


@pytest.fixture
def make_app(tmp_path, request):
    """Build an app on the test's backend; extra settings override the defaults."""
    apps = []

    def factory(backend: str | None = None, **overrides):
        if backend is None:
            backend = request.getfixturevalue("backend") if "backend" in request.fixturenames else "sqlite"
        if backend == "postgresql":
            url = request.getfixturevalue("pg_url")
        else:
            url = f"sqlite:///{tmp_path / 'test.sqlite3'}"
        config = {
            "TESTING": True,
            "DATABASE_URL": url,
            "STORAGE_DIR": str(tmp_path / "storage"),
            "STATE_DIR": str(tmp_path / "state"),
            "PUBLIC_URL": "http://files.test",
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
                db.session.execute(text("TRUNCATE files, blobs, versions, api_tokens RESTART IDENTITY CASCADE"))
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

def wait_for_http(url: str, timeout: float = 20.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except urllib.error.HTTPError:
            return  # it answered
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout}s")


class LiveServer:
    def __init__(self, base: str, proc: subprocess.Popen, env: dict, log_path: Path):
        self.base = base
        self.api = base + "/vimeo/api/v1.0"
        self.proc = proc
        self.env = env
        self.log_path = log_path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def gunicorn_server(tmp_path, request):
    """Start real gunicorn on a free port against the test's backend; stop it after."""
    servers = []

    def start(workers: int = 4, threads: int = 4, **env_overrides) -> LiveServer:
        backend = request.getfixturevalue("backend") if "backend" in request.fixturenames else "sqlite"
        db_url = request.getfixturevalue("pg_url") if backend == "postgresql" else f"sqlite:///{tmp_path / 'live.sqlite3'}"
        port = free_port()
        env = {
            **os.environ,
            "VIMEO_DATABASE_URL": db_url,
            "VIMEO_STORAGE_DIR": str(tmp_path / "live-storage"),
            "VIMEO_STATE_DIR": str(tmp_path / "live-state"),
            "VIMEO_PUBLIC_URL": f"http://127.0.0.1:{port}",
            "VIMEO_PASSWORD_HASH_METHOD": FAST_PASSWORD_HASH,
            "GUNICORN_BIND": f"127.0.0.1:{port}",
            "GUNICORN_WORKERS": str(workers),
            "GUNICORN_THREADS": str(threads),
            **{k: str(v) for k, v in env_overrides.items()},
        }
        if backend == "sqlite":
            migrate_database(db_url)
        else:  # the run's shared database: start from empty tables, as make_app does
            engine = create_engine(db_url)
            with engine.begin() as conn:
                conn.execute(text("TRUNCATE files, blobs, versions, api_tokens RESTART IDENTITY CASCADE"))
            engine.dispose()
        log_path = tmp_path / f"gunicorn-{port}.log"
        proc = spawn(gunicorn_command(), env, log_path)
        server = LiveServer(f"http://127.0.0.1:{port}", proc, env, log_path)
        servers.append(server)
        wait_for_http(server.api + "/file/" + "0" * 32, proc=proc)
        return server

    yield start
    for server in servers:
        stop(server.proc, timeout=15)


# -- one client interface over every deployment ----------------------------------------

class Answer:
    """What a conformance test looks at: status, headers, bytes."""

    def __init__(self, status: int, headers, body: bytes):
        self.status = status
        self.headers = headers  # case-insensitive mapping
        self.body = body

    def json(self):
        import json

        return json.loads(self.body)

    def __repr__(self):
        return f"<Answer {self.status} {self.body[:120]!r}>"


class Target:
    """A deployment under test. ``request`` speaks HTTP to it; ``sql`` and ``storage_dir``
    let a test check rows and files on disk behind the answers."""

    prefix = "/vimeo/api/v1.0"

    def __init__(self, name: str, db_url: str, storage_dir: str):
        self.name = name
        self.db_url = db_url
        self.storage_dir = storage_dir
        self._engine = None

    def request(self, method, path, *, headers=None, data=None, files=None, json=None) -> Answer:
        raise NotImplementedError

    def url(self, path: str) -> str:
        """Absolute URLs (as the API hands out) and prefixed paths pass unchanged."""
        return path if path.startswith(("http://", "https://", self.prefix)) else self.prefix + path

    def upload(self, content: bytes = b"hello world\n", filename: str = "hello.txt", *, content_type=None, **fields):
        """Multipart PUT /file, the original contract."""
        part = (filename, content, content_type) if content_type else (filename, content)
        return self.request("PUT", "/file", data={k: str(v) for k, v in fields.items()}, files={"file": part})

    def operator_token(self, *scopes: str) -> str:
        """An operator bearer token, stored the way ``manage.py tokens create`` stores it."""
        secret = "vmo_" + secrets.token_urlsafe(16)
        self.sql(
            "insert into api_tokens (name, token_hash, scopes, created_at) values (:n, :h, :s, CURRENT_TIMESTAMP)",
            n="test", h=hashlib.sha256(secret.encode()).hexdigest(), s=" ".join(scopes),
        )
        return secret

    def sql(self, statement: str, **params):
        if self._engine is None:
            self._engine = create_engine(self.db_url)
        with self._engine.begin() as conn:
            result = conn.execute(text(statement), params)
            return result.fetchall() if result.returns_rows else result.rowcount

    def close(self):
        if self._engine is not None:
            self._engine.dispose()


class FlaskTarget(Target):
    """The app in-process through Flask's test client (the embedded delivery)."""

    def __init__(self, name, app):
        super().__init__(name, app.config["DATABASE_URL"], app.config["STORAGE_DIR"])
        self.app = app
        self.client = app.test_client()

    def request(self, method, path, *, headers=None, data=None, files=None, json=None) -> Answer:
        import io

        kwargs = {"headers": headers or {}}
        if json is not None:
            kwargs["json"] = json
        elif files:
            form = dict(data or {})
            for field, part in files.items():
                form[field] = (io.BytesIO(part[1]), part[0], *part[2:])
            kwargs["data"] = form
            kwargs["content_type"] = "multipart/form-data"
        elif data is not None:
            kwargs["data"] = data
        response = self.client.open(self.url(path), method=method, **kwargs)
        return Answer(response.status_code, response.headers, response.get_data())


class HttpTarget(Target):
    """A deployment reached over real HTTP (gunicorn, or nginx in front of it)."""

    def __init__(self, name, base: str, db_url: str, storage_dir: str):
        super().__init__(name, db_url, storage_dir)
        import requests

        self.base = base
        self.session = requests.Session()

    def request(self, method, path, *, headers=None, data=None, files=None, json=None) -> Answer:
        url = self.url(path)
        url = url if url.startswith("http") else self.base + url
        response = self.session.request(
            method, url, headers=headers, data=data, files=files, json=json, allow_redirects=False, timeout=60
        )
        return Answer(response.status_code, response.headers, response.content)


@pytest.fixture(params=["sqlite", "postgresql", "stack"])
def target(request, make_app):
    """The conformance suite's deployment: the embedded app on SQLite and on PostgreSQL,
    and the stack, nginx (X-Accel, upload offload) in front of gunicorn on PostgreSQL."""
    if request.param == "stack":
        t = request.getfixturevalue("stack_target")  # tests/stack/harness.py
    else:
        t = FlaskTarget(request.param, make_app(backend=request.param))
    yield t
    t.close()
