"""metacache.py: 304, HEAD and repeated 404/410 answers run no SQL once cached; no race,
outage or lost invalidation lets the cache answer for a file that changed, or send bytes.

Runs on SQLite with the in-process cache and on PostgreSQL with a real Redis (keys of
this test's own on the shared server); outages on a redis-server of the test's own.
"""

from __future__ import annotations

import concurrent.futures
import io
import json
import logging
import os
import time

import pytest
import requests

from support import API
from support.cache import counting_sql, redis_cache_config
from support.database import empty_database
from support.polling import wait_until
from support.uploads import upload
from vimeo_api import files, metacache
from vimeo_api.extensions import cache, db
from vimeo_api.metacache import FileMeta
from vimeo_api.models import File, utcnow


@pytest.fixture(params=["sqlite+SimpleCache", "postgresql+Redis"])
def cached_app(request, make_app):
    backend, kind = request.param.split("+")
    if kind == "Redis":
        prefix = request.getfixturevalue("shared_redis_prefix")
        return make_app(backend=backend, **redis_cache_config(prefix))
    return make_app(backend=backend)


def url(body: dict) -> str:
    return f"{API}/file/{body['filehash']}"


# -- zero SQL once cached ---------------------------------------------------------------

def test_304_head_404_410_and_401_run_no_sql_once_cached(cached_app):
    client = cached_app.test_client()
    public = upload(client, max_downloads=0)
    gone = upload(client, b"to delete", max_downloads=0)
    guarded = upload(client, b"guarded", max_downloads=0, password="pw")
    unknown = f"{API}/file/{'e' * 32}"
    assert client.delete(url(gone), headers={"X-Owner-Token": gone["owner_token"]}).status_code == 202

    first = {
        "head": client.head(url(public)),
        "404": client.get(unknown),
        "410": client.get(url(gone)),
        "401": client.get(url(guarded)),
    }
    assert {k: (a.status_code, a.headers["X-Cache"]) for k, a in first.items()} == {
        "head": (200, "MISS"), "404": (404, "MISS"), "410": (410, "MISS"), "401": (401, "MISS"),
    }

    with counting_sql(cached_app) as sql:
        answers = {
            "head": client.head(url(public)),
            "if-none-match": client.get(url(public), headers={"If-None-Match": public["etag"]}),
            "if-modified-since": client.get(
                url(public), headers={"If-Modified-Since": first["head"].headers["Last-Modified"]}
            ),
            "404": client.get(unknown),
            "410": client.get(url(gone)),
            "401": client.get(url(guarded), headers={"X-Password": "wrong"}),
        }
    assert sql.statements == []
    assert {k: (a.status_code, a.headers["X-Cache"]) for k, a in answers.items()} == {
        "head": (200, "HIT"), "if-none-match": (304, "HIT"), "if-modified-since": (304, "HIT"),
        "404": (404, "HIT"), "410": (410, "HIT"), "401": (401, "HIT"),
    }
    # The cached answers are the uncached ones.
    for name in ("ETag", "Last-Modified", "Content-Length", "Content-Type", "Cache-Control", "Content-Disposition"):
        assert answers["head"].headers[name] == first["head"].headers[name]
    assert answers["if-none-match"].headers["ETag"] == public["etag"]
    assert answers["404"].get_json()["error"] == "Not Found"
    assert answers["410"].get_json()["error"] == "Gone"


def test_a_get_that_sends_bytes_is_decided_by_the_database(cached_app):
    client = cached_app.test_client()
    body = upload(client, b"cached bytes\n", max_downloads=3)
    assert client.head(url(body)).headers["X-Cache"] == "MISS"
    with counting_sql(cached_app) as sql:
        answer = client.get(url(body))
    assert (answer.status_code, answer.headers["X-Cache"], answer.get_data()) == (200, "HIT", b"cached bytes\n")
    # On PostgreSQL the UPDATE runs inside a WITH (it releases the content in the same statement).
    assert any("UPDATE FILES" in s.upper() for s in sql.statements)


# -- never stale ---------------------------------------------------------------------------

def test_one_time_file_cached_before_its_download_is_410_after(cached_app):
    client = cached_app.test_client()
    body = upload(client)  # one download
    assert client.head(url(body)).status_code == 200
    assert client.head(url(body)).headers["X-Cache"] == "HIT"
    assert client.get(url(body)).status_code == 200
    for method in ("HEAD", "GET"):
        answer = client.open(url(body), method=method)
        assert answer.status_code == 410, method
    assert client.get(url(body), headers={"If-None-Match": body["etag"]}).status_code == 410


@pytest.mark.parametrize("change", ["delete", "replace", "patch-password", "patch-limit", "expire"])
def test_every_change_of_state_drops_the_entry(cached_app, change):
    client = cached_app.test_client()
    body = upload(client, max_downloads=0)
    owner = {"X-Owner-Token": body["owner_token"]}
    client.head(url(body))
    assert client.head(url(body)).headers["X-Cache"] == "HIT"
    if change == "delete":
        client.delete(url(body), headers=owner)
        expected = 410
    elif change == "replace":
        assert client.put(url(body), data=b"new bytes", headers=owner).status_code == 200
        expected = 200
    elif change == "patch-password":
        assert client.patch(url(body), json={"password": "secret"}, headers=owner).status_code == 200
        expected = 401
    elif change == "patch-limit":
        client.get(url(body))  # one download used
        assert client.patch(url(body), json={"max_downloads": 1}, headers=owner).status_code == 200
        expected = 410
    else:
        with cached_app.app_context():
            file = files.find(body["filehash"])
            file.expires_at = utcnow()
            db.session.commit()
            assert files.expire_due(10) == 1
        expected = 410
    answer = client.head(url(body))
    assert (answer.status_code, answer.headers["X-Cache"]) == (expected, "MISS")
    if change == "replace":
        assert answer.headers["ETag"] != body["etag"]
        assert client.get(url(body), headers={"If-None-Match": body["etag"]}).status_code == 200


def test_a_lost_invalidation_cannot_send_changed_bytes(cached_app, monkeypatch):
    """If an invalidation were lost, the database still decides: the stale entry is
    dropped and the request answered on fresh metadata (new content, or 410)."""
    client = cached_app.test_client()
    replaced = upload(client, b"old content", max_downloads=0)
    deleted = upload(client, b"deleted content", max_downloads=0)
    for body in (replaced, deleted):
        client.head(url(body))
        assert client.head(url(body)).headers["X-Cache"] == "HIT"
    with monkeypatch.context() as m:
        # The domain announces the change; the metadata cache's receiver loses it.
        m.setattr(metacache, "invalidate_many", lambda filehashes: True)
        client.put(url(replaced), data=b"new content", headers={"X-Owner-Token": replaced["owner_token"]})
        client.delete(url(deleted), headers={"X-Owner-Token": deleted["owner_token"]})

    answer = client.get(url(replaced))
    assert (answer.status_code, answer.get_data(), answer.headers["X-Cache"]) == (200, b"new content", "MISS")
    assert answer.headers["ETag"] != replaced["etag"]
    assert client.get(url(deleted)).status_code == 410
    assert client.head(url(deleted)).status_code == 410
    with cached_app.app_context():
        assert files.find(deleted["filehash"]).downloads == 0


@pytest.mark.parametrize("change", ["add", "change"])
def test_a_lost_invalidation_cannot_skip_a_new_password(cached_app, monkeypatch, change):
    """Issue 13, item 3: the owner adds or changes the password and the cache's
    invalidation is lost. The cached metadata still says "no password" (or names the old
    one), but the download is decided by the database: refused, no download used."""
    client = cached_app.test_client()
    old = {} if change == "add" else {"X-Password": "old"}
    body = upload(client, b"soon guarded", max_downloads=0, **({} if change == "add" else {"password": "old"}))
    assert client.get(url(body), headers=old).status_code == 200  # one download
    client.head(url(body), headers=old)  # cached (a plain GET claims its download in the database)
    assert client.head(url(body), headers=old).headers["X-Cache"] == "HIT"
    owner = {"X-Owner-Token": body["owner_token"]}
    with monkeypatch.context() as m:
        m.setattr(metacache, "invalidate_many", lambda filehashes: True)
        assert client.patch(url(body), json={"password": "new"}, headers=owner).status_code == 200
    assert client.head(url(body), headers=old).headers["X-Cache"] == "HIT"  # the stale entry is there
    refused = client.get(url(body), headers=old)
    assert refused.status_code == 401 and refused.get_json()["error"] == "Unauthorized"
    assert refused.get_data() != b"soon guarded"
    with cached_app.app_context():
        assert files.find(body["filehash"]).downloads == 1
    assert client.get(url(body), headers=old).status_code == 401  # and so it stays
    assert client.get(url(body), headers={"X-Password": "new"}).get_data() == b"soon guarded"


def test_a_fill_that_read_before_an_invalidation_is_never_used(cached_app):
    """The race itself: a request reads the row, another commits a change and
    invalidates, then the first stores what it read. The next lookup must not use it."""
    client = cached_app.test_client()
    body = upload(client, max_downloads=0)
    with cached_app.test_request_context():
        def slow_load(filehash):
            old = FileMeta.of(files.find(filehash))  # read before the change…
            row = files.find(filehash)
            assert files.mark_gone(row.id, "deleted")  # …committed and invalidated meanwhile
            return old

        raced = metacache.lookup(body["filehash"], slow_load)
        assert raced.status == "available"  # the racing request itself saw the old row
        again = metacache.lookup(body["filehash"], files.find)
        assert again.status == "gone"
    answer = client.head(url(body))
    assert answer.status_code == 410


def test_a_missing_epoch_matches_nothing(cached_app):
    client = cached_app.test_client()
    body = upload(client, max_downloads=0)
    client.head(url(body))
    assert client.head(url(body)).headers["X-Cache"] == "HIT"
    state = cached_app.extensions["vimeo_metacache"]
    with cached_app.app_context():
        if state.shared_epoch_file:  # in-process caches: the epoch file every process shares
            os.unlink(state.shared_epoch_file)
        else:
            cache.delete(metacache.EPOCH + body["filehash"])  # evicted, or cleared
    assert client.head(url(body)).headers["X-Cache"] == "MISS"
    assert client.head(url(body)).headers["X-Cache"] == "HIT"
    with cached_app.app_context():
        assert cache.clear()  # manage.py cache clear
    assert client.head(url(body)).headers["X-Cache"] == "MISS"


def test_file_meta_has_files_attributes_and_availability():
    now = utcnow()
    row = File(
        id=1, filehash="a" * 32, filename="f", content_type="text/plain", size=3, sha256="b" * 64,
        password_hash=None, owner_token_hash="c", max_downloads=2, downloads=1, status="available",
        gone_reason=None, created_at=now, modified_at=now, expires_at=None,
    )
    meta = FileMeta.of(row)
    assert FileMeta.from_dict(json.loads(json.dumps(meta.as_dict()))) == meta
    for downloads, status, expires in [(1, "available", None), (2, "available", None), (0, "gone", None),
                                       (0, "available", now)]:
        row.downloads, row.status, row.expires_at = downloads, status, expires
        assert FileMeta.of(row).is_available(now) == row.is_available(now)


# -- outages ---------------------------------------------------------------------------

def outage_app(make_app, server, backend="sqlite", **config):
    settings = {
        "CACHE_TYPE": "RedisCache",
        "CACHE_REDIS_URL": server.url(0),
        "RATELIMIT_STORAGE_URI": server.url(1),
        "CACHE_RETRY_AFTER": 0.5,
        **config,
    }
    return make_app(backend=backend, **settings)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_redis_stopped_every_answer_is_right_then_hit_again(make_app, private_redis, backend, caplog):
    app = outage_app(make_app, private_redis, backend, CACHE_RETRY_AFTER=2)
    client = app.test_client()
    public = upload(client, max_downloads=0)
    client.head(url(public))
    assert client.head(url(public)).headers["X-Cache"] == "HIT"

    private_redis.stop()
    caplog.set_level(logging.WARNING, logger="vimeo_api.metacache")
    started = time.monotonic()
    one_time = upload(client, b"one time")
    guarded = upload(client, b"guarded", password="pw", max_downloads=0)
    answers = {
        "download": client.get(url(one_time)),
        "410": client.get(url(one_time)),
        "304": client.get(url(public), headers={"If-None-Match": public["etag"]}),
        "head": client.head(url(public)),
        "404": client.get(f"{API}/file/{'d' * 32}"),
        "401": client.get(url(guarded)),
        "200 with password": client.get(url(guarded), headers={"X-Password": "pw"}),
    }
    elapsed = time.monotonic() - started
    assert {k: a.status_code for k, a in answers.items()} == {
        "download": 200, "410": 410, "304": 304, "head": 200, "404": 404, "401": 401, "200 with password": 200,
    }
    assert {a.headers["X-Cache"] for a in answers.values()} == {"MISS"}
    assert answers["download"].get_data() == b"one time"
    # The breaker: not one timeout per request, and one warning, not one per request.
    assert elapsed < 2 + 1
    warnings = [r for r in caplog.records if "cache unavailable" in r.getMessage()]
    assert len(warnings) == 1

    private_redis.start()
    # Back in use once CACHE_RETRY_AFTER is over: the first HEAD after it fills the
    # entry, the next one reads it.
    wait_until(lambda: client.head(url(public)).headers["X-Cache"] == "HIT", 2 + 5, "the cache was not used again")
    assert client.head(url(one_time)).status_code == 410


def test_a_hung_redis_costs_little_and_owed_invalidations_land_when_it_is_back(make_app, private_redis):
    """A frozen Redis keeps its data: a file deleted meanwhile must not come back from it."""
    app = outage_app(make_app, private_redis)
    client = app.test_client()
    body = upload(client, max_downloads=0)
    client.head(url(body))
    assert client.head(url(body)).headers["X-Cache"] == "HIT"

    private_redis.freeze()
    try:
        started = time.monotonic()
        assert client.delete(url(body), headers={"X-Owner-Token": body["owner_token"]}).status_code == 202
        statuses = [client.head(url(body)).status_code for _ in range(10)]
        elapsed = time.monotonic() - started
    finally:
        private_redis.thaw()
    assert statuses == [410] * 10
    assert elapsed < 3  # socket timeouts of 0.2 s, then the breaker
    with app.app_context():
        assert app.extensions["vimeo_metacache"].owes()

    # Back: the owed invalidation is written before the cache is read again (by the
    # retry thread, or by the first request after CACHE_RETRY_AFTER). Every answer until
    # the cache answers again is checked: none is the 200 the frozen Redis still holds.
    def answered_from_the_cache() -> bool:
        answer = client.head(url(body))
        assert answer.status_code == 410
        return answer.headers["X-Cache"] == "HIT"

    wait_until(answered_from_the_cache, 0.5 + 5, "the cache was not used again")
    with app.app_context():
        assert not app.extensions["vimeo_metacache"].owes()
    assert client.head(url(body)).headers["X-Cache"] == "HIT"


def test_owed_invalidations_are_written_by_the_retry_thread(make_app, private_redis):
    """A Redis that comes back with its data (here: saved, stopped, restarted from the
    dump) holds entries that went stale meanwhile. The process that owes their
    invalidation writes it without waiting for a request of its own, because other
    processes read the cache as soon as it is back."""
    app = outage_app(make_app, private_redis)
    client = app.test_client()
    body = upload(client, max_downloads=0)
    client.head(url(body))
    assert client.head(url(body)).headers["X-Cache"] == "HIT"
    private_redis.client().save()
    private_redis.stop()
    assert client.delete(url(body), headers={"X-Owner-Token": body["owner_token"]}).status_code == 202
    state = app.extensions["vimeo_metacache"]
    assert state.owes()
    private_redis.start()
    wait_until(lambda: not state.owes(), 5, "the retry thread did not write the owed invalidation", interval=0.1)
    # Another process on the same Redis and database, which owes nothing itself.
    other = outage_app(make_app, private_redis).test_client()
    assert other.head(url(body)).status_code == 410


# -- through a real gunicorn -------------------------------------------------------------

@pytest.fixture
def emptied_afterwards(pg_url):
    """The session's PostgreSQL database as other tests expect it: no rows of ours left."""
    yield
    empty_database(pg_url)


@pytest.mark.parametrize("backend", ["postgresql"])
def test_twenty_concurrent_downloads_of_a_cached_one_time_file(gunicorn_server, backend, shared_redis_prefix,
                                                               emptied_afterwards):
    config = redis_cache_config(shared_redis_prefix)
    server = gunicorn_server(workers=4, threads=8, **{f"VIMEO_{k}": v for k, v in config.items()})
    session = requests.Session()
    link = f"{server.api}/file/{upload(server, b'exactly once', 'once.txt')['filehash']}"
    # Cached in every worker's view (Redis is shared) before the race.
    heads = [session.head(link) for _ in range(8)]
    assert {h.status_code for h in heads} == {200}
    assert "HIT" in {h.headers["X-Cache"] for h in heads}

    def fetch(_):
        response = requests.get(link, timeout=30)
        return response.status_code, response.content

    with concurrent.futures.ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(fetch, range(20)))
    assert sorted(status for status, _ in results) == [200] + [410] * 19
    assert [body for status, body in results if status == 200] == [b"exactly once"]
    assert {session.head(link).status_code for _ in range(8)} == {410}


@pytest.mark.parametrize("backend", ["sqlite"])
def test_in_process_caches_of_several_workers_agree(gunicorn_server, backend):
    """The embedded default runs several gunicorn workers, each with its own in-process
    cache: a change made through one is seen by all (the shared epoch file)."""
    server = gunicorn_server(workers=4, threads=2)
    session = requests.Session()
    body = upload(server, b"first", "f.txt", max_downloads=0)
    link = f"{server.api}/file/{body['filehash']}"
    for _ in range(40):  # fill every worker's cache
        assert requests.head(link).status_code == 200
    replaced = session.put(link, data=b"second", headers={"X-Owner-Token": body["owner_token"]})
    assert replaced.status_code == 200
    new_etag = replaced.json()["etag"]
    for _ in range(40):  # new connections: any worker
        answer = requests.get(link, headers={"If-None-Match": body["etag"]})
        assert (answer.status_code, answer.headers["ETag"]) == (200, new_etag)


# -- what the cache holds is data, never code (issue 13, item 12) -----------------------------

class _Planted:
    """What someone who can write to the cache's Redis would plant: unpickling it
    creates a file (a harmless stand-in for running any code)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_a_value_planted_in_redis_is_never_unpickled(make_app, shared_redis_prefix, tmp_path):
    import pickle

    import redis

    from support import SHARED_REDIS

    app = make_app(backend="sqlite", **redis_cache_config(shared_redis_prefix))
    client = app.test_client()
    body = upload(client, b"cached bytes\n", max_downloads=0)
    assert client.head(url(body)).headers["X-Cache"] == "MISS"
    assert client.head(url(body)).headers["X-Cache"] == "HIT"
    server = redis.Redis.from_url(f"{SHARED_REDIS}/1")
    try:
        # What the cache stores is JSON text.
        stored = server.get(shared_redis_prefix + metacache.META + body["filehash"])
        assert json.loads(stored)[3]["filehash"] == body["filehash"]
        marker = tmp_path / "code-ran"
        planted = b"!" + pickle.dumps(_Planted(str(marker)))  # cachelib's pickle framing
        for key in (metacache.META + body["filehash"], metacache.GLOBAL_EPOCH, "pwok:x"):
            server.set(shared_redis_prefix + key, planted)
    finally:
        server.close()
    answer = client.head(url(body))
    # Read as a miss (a planted epoch leaves the API uncached until it expires: a Redis
    # writer can deny the cache, not run code or change an answer).
    assert answer.status_code == 200 and answer.headers["X-Cache"] == "MISS"
    assert client.get(url(body)).get_data() == b"cached bytes\n"
    assert not marker.exists()
