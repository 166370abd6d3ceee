"""What the tests share, defined once.

- ``support.fixtures``: every fixture the suite shares (registered by tests/conftest.py
  through ``pytest_plugins``);
- ``support.targets``: the deployments a conformance test speaks HTTP to;
- ``support.uploads``: the one ``upload()`` helper, for every kind of client;
- ``support.services``: processes of our own (gunicorn, Celery, redis-server, a
  PostgreSQL cluster), built on deploy/stack.py's ``spawn``/``stop``/``free_port``;
- ``support.stacks``: nginx in front of gunicorn, and gunicorn with Celery workers;
- ``support.checks``: requests and checks on answers over real HTTP (one header
  value, a JSON error on the wire);
- ``support.database``, ``support.cache``, ``support.operators``: rows, Redis keys and
  operator tokens behind the answers;
- ``support.logs`` and ``support.polling``: reading what another process wrote, only
  complete lines, and waiting for a result to a deadline instead of sleeping.

This module holds the constants; it imports nothing from the app.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Every route of the API is below this prefix (SPEC 3).
API = "/vimeo/api/v1.0"
# What the apps under test hand out as their public URL (the stack's nginx is reached at
# another address: support.targets.PublicURLAdapter sends it there).
PUBLIC_URL = "http://files.test"
# The production hash is slow on purpose; tests that look at it say so themselves.
FAST_PASSWORD_HASH = "pbkdf2:sha256:1000"
# The shared Redis serves other test runs at the same time: keys of our own, never flushed.
SHARED_REDIS = os.environ.get("VIMEO_TEST_REDIS_URL", "redis://127.0.0.1:6379")
PG_ADMIN_URL = os.environ.get("VIMEO_TEST_PG_ADMIN_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")
# What a successful download carries exactly once (SPEC 3.2), whoever sent it.
SUCCESS_HEADERS = (
    "Content-Type", "Content-Length", "ETag", "Last-Modified", "Accept-Ranges",
    "X-Content-Type-Options", "Content-Disposition", "Cache-Control", "Content-Security-Policy",
)
# The keys of every JSON error (SPEC 3.4).
ERROR_KEYS = {"error", "message", "request_id"}
