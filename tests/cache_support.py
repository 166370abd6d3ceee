"""Helpers of the cache and rate-limit tests: a redis-server of the test's own (to stop
and start), keys of our own on the shared Redis, a counter of SQL statements, and
operator tokens.

The shared Redis (127.0.0.1:6379) serves other test runs at the same time: it is never
flushed or stopped. Each app here uses a key prefix of its own and removes its keys
after the test; outage tests run their own ``redis-server``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import redis
from sqlalchemy import event

from deploy.stack import free_port
from vimeo_api.extensions import db

SHARED_REDIS = os.environ.get("VIMEO_TEST_REDIS_URL", "redis://127.0.0.1:6379")
API = "/vimeo/api/v1.0"


class PrivateRedis:
    """A redis-server for one test, without persistence, that the test may stop, start,
    or freeze (SIGSTOP: it accepts connections and never answers, like a hung server)."""

    def __init__(self, directory: Path, password: str | None = None):
        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server is not installed: these tests need a real Redis")
        self.directory = directory
        self.port = free_port()
        self.password = password  # requirepass: clients must give it (in the URL)
        self.proc: subprocess.Popen | None = None
        directory.mkdir(parents=True, exist_ok=True)

    def url(self, db: int = 0) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/{db}"

    def client(self, db: int = 0) -> redis.Redis:
        return redis.Redis.from_url(self.url(db), socket_timeout=2)

    def start(self) -> None:
        log = open(self.directory / "redis.log", "ab")
        try:
            self.proc = subprocess.Popen(
                ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", str(self.directory),
                 *(["--requirepass", self.password] if self.password else [])],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        finally:
            log.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if self.client().ping():
                    return
            except redis.RedisError:
                if self.proc.poll() is not None:
                    raise RuntimeError("redis-server exited while starting")
                time.sleep(0.05)
        raise RuntimeError("redis-server did not answer within 10s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a frozen server cannot act on SIGTERM
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def freeze(self) -> None:
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self.proc.send_signal(signal.SIGCONT)


@pytest.fixture
def private_redis(tmp_path):
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


def redis_cache_config(prefix: str, url: str | None = None) -> dict:
    """Settings for an app whose cache and rate limits are in Redis under ``prefix``."""
    base = url or SHARED_REDIS
    return {
        "CACHE_TYPE": "RedisCache",
        "CACHE_REDIS_URL": f"{base}/1" if url is None else url,
        "CACHE_KEY_PREFIX": prefix,
        "RATELIMIT_STORAGE_URI": f"{base}/2" if url is None else url,
        "RATELIMIT_KEY_PREFIX": prefix.rstrip(":"),
    }


class SqlCounter:
    """Counts the statements an app sends to its database while active."""

    def __init__(self):
        self.statements: list[str] = []

    def __call__(self, conn, cursor, statement, parameters, context, executemany):
        self.statements.append(statement)

    @property
    def count(self) -> int:
        return len(self.statements)


@contextlib.contextmanager
def counting_sql(app):
    counter = SqlCounter()
    with app.app_context():
        engine = db.engine
    event.listen(engine, "before_cursor_execute", counter)
    try:
        yield counter
    finally:
        event.remove(engine, "before_cursor_execute", counter)


def bearer(secret: str) -> dict:
    return {"Authorization": f"Bearer {secret}"}
