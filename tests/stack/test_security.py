"""Security findings of issue 13 that need nginx in front: the database has the last
word on a file's password even when a change's invalidation is lost, on the app's path
behind nginx and on nginx's own fast path.

A lost invalidation is made two ways, as a killed worker would leave it: the cache's
entry and epoch put back as they were before a PATCH (the cache missed it, the grants
did not), and a change written to the database alone (neither the cache nor the grants
heard of it).
"""

from __future__ import annotations

import time

import pytest
import redis
from werkzeug.security import generate_password_hash

from support import API, SHARED_REDIS as REDIS_URL
from .test_fastpath import CONTENT, by_nginx, grant_dirs, hot, owner, public
from support.checks import assert_json_error, get

import requests


def _cache_keys(stack, filehash: str) -> list[str]:
    from vimeo_api import metacache

    prefix = stack.env["VIMEO_CACHE_KEY_PREFIX"]
    return [prefix + metacache.META + filehash, prefix + metacache.EPOCH + filehash]


@pytest.mark.parametrize("change", ["add", "change"])
def test_a_lost_cache_invalidation_cannot_skip_a_new_password(stack, change):
    old = {} if change == "add" else {"X-Password": "old"}
    body = public(stack, **({} if change == "add" else {"password": "old"}))
    path = f"/file/{body['filehash']}"
    assert get(stack, path, old).content == CONTENT
    get(stack, path, old, method="HEAD")  # fills the app's cache (a plain GET reads the database)
    assert get(stack, path + "?again", old).headers["X-Cache"] == "HIT"  # the app's cache holds it
    server = redis.Redis.from_url(REDIS_URL + "/1")
    try:
        saved = {key: server.dump(key) for key in _cache_keys(stack, body["filehash"])}
        assert all(saved.values())
        changed = requests.patch(stack.base + API + path, json={"password": "new"}, headers=owner(body), timeout=10)
        assert changed.status_code == 200
        for key, value in saved.items():  # the invalidation never happened
            server.restore(key, 0, value, replace=True)
    finally:
        server.close()
    for attempt in range(3):
        refused = get(stack, path, old)
        assert_json_error(refused, 401, "Unauthorized")
        assert not by_nginx(stack, refused)
    assert get(stack, path, {"X-Password": "new"}).content == CONTENT


def test_a_change_no_cache_or_grant_heard_of_is_refused_within_a_second(stack):
    """The fast path: nginx answers from a grant, the app's cache says "public", and a
    password lands in the database alone. nginx asks the app about its grant once a
    second; the app checks an existing grant against the database every time, so the
    fast path ends within about a second, and the app's path refuses at once."""
    body = public(stack)
    path = f"/file/{body['filehash']}"
    hot(stack, path)
    stack_sql(stack, "update files set password_hash = :h, access_version = access_version + 1 where filehash = :f",
              h=generate_password_hash("new", method="pbkdf2:sha256:1000"), f=body["filehash"])
    assert_json_error(get(stack, path + "?via=app"), 401, "Unauthorized")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        answer = get(stack, path)
        if answer.status_code == 401:
            break
        assert answer.status_code == 200
        time.sleep(0.05)
    assert_json_error(answer, 401, "Unauthorized")
    for _ in range(5):
        assert_json_error(get(stack, path), 401, "Unauthorized")
    assert [list(d.iterdir()) for d in grant_dirs(stack) if any(d.iterdir())] == []
    assert get(stack, path, {"X-Password": "new"}).content == CONTENT


def stack_sql(stack, statement: str, **params) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(stack.db_url)
    try:
        with engine.begin() as conn:
            conn.execute(text(statement), params)
    finally:
        engine.dispose()


def test_nginxs_logs_and_cache_are_not_readable_by_others(stack):
    """nginx writes its logs 0644 and they name capability URLs: their directories are
    the service's alone (0750), and nginx, the same user as the app, still sends blobs
    that are 0640 in 0750 directories."""
    body = public(stack)
    path = f"/file/{body['filehash']}"
    assert hot(stack, path).content == CONTENT
    for directory in (stack.root / "log", stack.root / "nginx"):
        assert directory.stat().st_mode & 0o777 == 0o750, directory
    blob = next(p for p in (stack.root / "storage" / "blobs").rglob("*") if p.is_file())
    assert blob.stat().st_mode & 0o777 == 0o640
