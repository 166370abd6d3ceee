"""The metadata cache and the rate limits in tests: settings for keys of a test's own
on the shared Redis, and a counter of the SQL statements an app sends.

The shared Redis (``SHARED_REDIS``) serves other test runs at the same time: it is
never flushed or stopped. Each app uses a key prefix of its own (the
``shared_redis_prefix`` fixture removes its keys after the test); outage tests run a
``PrivateRedis`` instead.
"""

from __future__ import annotations

import contextlib

from sqlalchemy import event

from vimeo_api.extensions import db

from . import SHARED_REDIS


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
