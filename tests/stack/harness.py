"""Real nginx in front of real gunicorn, started once per session.

``nginx_stack`` renders the project's nginx.conf (free ports, its own directories) and
runs gunicorn with X-Accel delivery and the raw-upload offload on the run's PostgreSQL
database. ``stack_target`` hands the conformance suite an ``HttpTarget`` on it, with the
tables emptied and the stored bytes removed before and after each test. tests/conftest.py
imports both fixtures so that its ``target`` fixture can offer the "stack" deployment.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
from sqlalchemy import create_engine, text

from deploy.stack import (
    BODY_DIR,
    FAST_DOWNLOADS_LOG,
    MiB,
    NginxSettings,
    check_nginx_conf,
    free_port,
    gunicorn_command,
    nginx_command,
    spawn,
    stop,
    wait_for_http,
    write_nginx_conf,
)

# What the conformance suite expects the API to hand out (as FlaskTarget's apps do).
PUBLIC_URL = "http://files.test"
FAST_PASSWORD_HASH = "pbkdf2:sha256:1000"
API = "/vimeo/api/v1.0"
REDIS_URL = os.environ.get("VIMEO_TEST_REDIS_URL", "redis://127.0.0.1:6379")


@dataclass
class Stack:
    """One running nginx + gunicorn pair and where to look behind it."""

    root: Path
    db_url: str
    env: dict
    settings: NginxSettings
    base: str = ""  # nginx
    app_base: str = ""  # gunicorn, directly (to see what the app itself answered)
    procs: dict = field(default_factory=dict)

    @property
    def storage_dir(self) -> str:
        return self.env["VIMEO_STORAGE_DIR"]

    @property
    def body_dir(self) -> Path:
        return Path(self.storage_dir, BODY_DIR)

    def access_log(self) -> str:
        return _read(self.root / "log" / "access.log")

    def error_log(self) -> str:
        return _read(self.root / "log" / "error.log")

    def app_log(self) -> str:
        return _read(self.root / "log" / "gunicorn.log")

    def start_gunicorn(self) -> None:
        proc = spawn(gunicorn_command(), self.env, self.root / "log" / "gunicorn.log")
        self.procs["gunicorn"] = proc
        wait_for_http(self.app_base + API + "/file/" + "0" * 32, procs=[proc])

    def stop_gunicorn(self) -> None:
        # SIGINT: gunicorn's quick shutdown (SIGTERM waits for nginx's idle keep-alive
        # connections to end).
        stop(self.procs.pop("gunicorn"), signal.SIGINT)

    def start_nginx(self) -> None:
        conf = write_nginx_conf(self.settings)
        check_nginx_conf(conf, self.settings)
        proc = spawn(nginx_command(conf, self.settings), self.env, self.root / "log" / "nginx.out")
        self.procs["nginx"] = proc
        wait_for_http(self.base + "/_nothing_here", procs=[proc])

    def stop(self) -> None:
        if "nginx" in self.procs:
            stop(self.procs.pop("nginx"))
        if "gunicorn" in self.procs:
            self.stop_gunicorn()

    def reset(self) -> None:
        """Every table but the migrations' emptied, every stored byte removed."""
        engine = create_engine(self.db_url)
        try:
            with engine.begin() as conn:
                tables = conn.execute(text(
                    "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename <> 'alembic_version'"
                )).scalars().all()
                if tables:
                    conn.execute(text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))
        finally:
            engine.dispose()
        for entry in Path(self.storage_dir).iterdir():
            if entry == self.body_dir:
                # nginx created this directory and writes into it: empty it, keep it.
                for leftover in entry.iterdir():
                    leftover.unlink()
            elif entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        Path(self.storage_dir, "blobs").mkdir(exist_ok=True)

    def target(self, target_class):
        """An ``HttpTarget`` on nginx that also follows the public URLs the API hands out."""
        t = target_class("stack", self.base, self.db_url, self.storage_dir)
        t.session.mount(PUBLIC_URL, PublicURLAdapter(PUBLIC_URL, self.base))
        t.stack = self
        return t


class PublicURLAdapter(requests.adapters.HTTPAdapter):
    """Sends requests for the API's public URL (http://files.test) to this stack's nginx."""

    def __init__(self, public: str, base: str):
        super().__init__()
        self.public, self.base = public, base

    def send(self, request, **kwargs):
        if request.url.startswith(self.public):
            request.url = self.base + request.url[len(self.public):]
        return super().send(request, **kwargs)


def start_stack(root: Path, db_url: str, *, public_url: str = PUBLIC_URL, delivery: str = "accel",
                offload: bool = True, max_upload: int = 16 * MiB, **env_overrides) -> Stack:
    """nginx + gunicorn on free ports, files under ``root``; stop with ``Stack.stop``."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "log").mkdir(exist_ok=True)
    nginx_port, app_port = free_port(), free_port()
    # The test run's own environment must not leak settings into the app under test.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIMEO_", "GUNICORN_"))}
    env.update({
        "VIMEO_DATABASE_URL": db_url,
        "VIMEO_STORAGE_DIR": str(root / "storage"),
        "VIMEO_STATE_DIR": str(root / "state"),
        "VIMEO_PUBLIC_URL": public_url,
        "VIMEO_DELIVERY": delivery,
        "VIMEO_UPLOAD_OFFLOAD": "1" if offload else "0",
        "VIMEO_MAX_UPLOAD_SIZE": str(max_upload),
        "VIMEO_PASSWORD_HASH_METHOD": FAST_PASSWORD_HASH,
        "VIMEO_EMBEDDED_SWEEP_INTERVAL": "0",
        # As in the stack: nginx is the one proxy whose X-Forwarded-For names the client.
        "VIMEO_TRUSTED_PROXY_COUNT": "1",
        "GUNICORN_BIND": f"127.0.0.1:{app_port}",
        "GUNICORN_WORKERS": "2",
        "GUNICORN_THREADS": "4",
        "GUNICORN_KEEPALIVE": "75",
        # Redis for the metadata cache and the rate limits, as in `make stack`, under
        # keys of this stack's own (other runs share the server).
        "VIMEO_CACHE_TYPE": "RedisCache",
        "VIMEO_CACHE_REDIS_URL": REDIS_URL + "/1",
        "VIMEO_CACHE_KEY_PREFIX": f"vimeo_test_{os.getpid()}_{nginx_port}:",
        "VIMEO_RATELIMIT_STORAGE_URI": REDIS_URL + "/2",
        "VIMEO_RATELIMIT_KEY_PREFIX": f"vimeo_test_{os.getpid()}_{nginx_port}",
        "VIMEO_TRUSTED_PROXY_COUNT": "1",
        # The conformance suite uploads from one address faster than the default allows
        # (tests/test_limits.py checks the limit itself).
        "VIMEO_UPLOAD_RATE_LIMIT": "100000/minute",
        "VIMEO_UPLOAD_BYTES_LIMIT": f"{1 << 40}/hour",
        # ... and sends wrong passwords to many files from one address within a minute
        # (each file's own budget stays the default; tests/test_limits.py checks both).
        "VIMEO_PASSWORD_ADDRESS_RATE_LIMIT": "100000/minute",
        "VIMEO_FAST_PATH_LOG": str(root / "log" / FAST_DOWNLOADS_LOG),
    })
    env.update({k: str(v) for k, v in env_overrides.items()})
    settings = NginxSettings(
        listen=f"127.0.0.1:{nginx_port}",
        app_address=env["GUNICORN_BIND"],
        storage_dir=env["VIMEO_STORAGE_DIR"],
        runtime_dir=str(root / "nginx"),
        log_dir=str(root / "log"),
        max_body_size=max_upload,
        worker_processes="2",
    )
    stack = Stack(root, db_url, env, settings, base=f"http://127.0.0.1:{nginx_port}",
                  app_base=f"http://{env['GUNICORN_BIND']}")
    try:
        stack.start_gunicorn()
        stack.start_nginx()
    except BaseException:
        stack.stop()
        raise
    return stack


def _conftest():
    """tests/conftest.py as pytest loaded it (importing it again would make a second copy
    of its session fixtures)."""
    path = Path(__file__).resolve().parents[1] / "conftest.py"
    for module in list(sys.modules.values()):
        file = getattr(module, "__file__", None)
        if file and Path(file).resolve() == path:
            return module
    raise RuntimeError("tests/conftest.py is not loaded")


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


@pytest.fixture(scope="session")
def nginx_stack(pg_url, tmp_path_factory):
    """The stack for the whole run: nginx (X-Accel, upload offload) → gunicorn → PostgreSQL."""
    stack = start_stack(tmp_path_factory.mktemp("stack"), pg_url)
    yield stack
    stack.stop()


@pytest.fixture
def stack_target(nginx_stack):
    """The conformance suite's "stack" target: clean tables and storage for each test."""
    nginx_stack.reset()
    t = nginx_stack.target(_conftest().HttpTarget)
    yield t
    t.close()
    nginx_stack.reset()
