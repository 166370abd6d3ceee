"""The operator purge (SPEC 3.7): ``POST /purge`` drops cached metadata and cached
404/410 answers for URLs, a filehash prefix, or everything; ``GET /purge/<id>``."""

from __future__ import annotations

import time

import pytest

from support import API
from support.cache import redis_cache_config
from support.operators import bearer
from support.uploads import upload


class FlaskOperator:
    """The app in-process, with an operator token made by the domain layer."""

    def __init__(self, app, *scopes):
        from vimeo_api.operator_tokens import create_token

        self.app = app
        # An in-process cache drops every entry on any invalidation (metacache.py's shared
        # epoch file); Redis drops exactly the ones named.
        self.precise = app.config["CACHE_TYPE"] == "RedisCache"
        self.client = app.test_client()
        with app.app_context():
            _, self.token = create_token("purger", list(scopes or ["cache:purge"]))

    def upload(self, content=b"purge me", **fields) -> dict:
        """An unlimited file (a purge is about files that stay available)."""
        return upload(self.client, content, "p.txt", **{"max_downloads": 0, **fields})

    def head(self, filehash: str):
        return self.client.head(f"{API}/file/{filehash}")

    def cached(self, filehash: str) -> bool:
        return self.head(filehash).headers["X-Cache"] == "HIT"

    def warm(self, *filehashes: str) -> None:
        for filehash in filehashes:
            self.head(filehash)
            assert self.cached(filehash)

    def purge(self, body, token=None):
        return self.client.post(f"{API}/purge", json=body, headers=bearer(token or self.token))

    def status(self, purge_id: str, token=None):
        return self.client.get(f"{API}/purge/{purge_id}", headers=bearer(token or self.token))


@pytest.fixture(params=["sqlite+SimpleCache", "postgresql+Redis"])
def operator(request, make_app):
    backend, kind = request.param.split("+")
    if kind == "Redis":
        app = make_app(backend=backend, **redis_cache_config(request.getfixturevalue("shared_redis_prefix")))
    else:
        app = make_app(backend=backend)
    return FlaskOperator(app)


def accepted(answer) -> dict:
    assert answer.status_code == 202, answer.get_data()
    body = answer.get_json()
    assert set(body) == {"purge_id", "status"}
    assert body["status"] == "done"
    return body


def test_purge_by_url_drops_those_entries_only(operator):
    a, b, c, d = (operator.upload(f"file {i}".encode()) for i in range(4))
    operator.warm(a["filehash"], b["filehash"], c["filehash"], d["filehash"])
    body = accepted(operator.purge({"type": "url", "items": [
        a["url"],  # absolute, as handed out
        f"{API}/file/{b['filehash']}?password=x",  # a path with a query
        c["filehash"],  # bare
    ]}))
    for file in (a, b, c):
        assert operator.head(file["filehash"]).headers["X-Cache"] == "MISS"
    assert operator.cached(d["filehash"]) == operator.precise
    record = operator.status(body["purge_id"])
    assert record.status_code == 200
    assert record.get_json()["status"] == "done"
    assert record.get_json()["type"] == "url"
    assert record.get_json()["files"] == 3


def test_purge_by_version_url(operator):
    file = operator.upload()
    owner = {"X-Owner-Token": file["owner_token"]}
    version = operator.client.post(f"{API}/file/{file['filehash']}/versions", headers=owner).get_json()
    operator.warm(file["filehash"])
    accepted(operator.purge({"type": "url", "items": [version["url"]]}))
    assert operator.head(file["filehash"]).headers["X-Cache"] == "MISS"


def test_purge_by_prefix(operator):
    files = [operator.upload(f"prefixed {i}".encode()) for i in range(6)]
    target = files[0]["filehash"]
    prefix = target[:3]
    others = [f["filehash"] for f in files[1:] if not f["filehash"].startswith(prefix)]
    unknown = prefix + "0" * 29 if target != prefix + "0" * 29 else prefix + "1" * 29
    operator.warm(target, *others)
    operator.client.get(f"{API}/file/{unknown}")
    assert operator.client.get(f"{API}/file/{unknown}").headers["X-Cache"] == "HIT"

    accepted(operator.purge({"type": "prefix", "items": [f"{API}/file/{prefix}*"]}))
    assert operator.head(target).headers["X-Cache"] == "MISS"
    assert operator.client.get(f"{API}/file/{unknown}").headers["X-Cache"] == "MISS"  # its cached 404
    assert [operator.cached(h) for h in others] == [operator.precise] * len(others)


def test_purge_all(operator):
    files = [operator.upload(f"all {i}".encode())["filehash"] for i in range(3)]
    operator.warm(*files)
    unknown = f"{API}/file/{'f' * 32}"
    operator.client.get(unknown)
    assert operator.client.get(unknown).headers["X-Cache"] == "HIT"
    accepted(operator.purge({"type": "all", "items": []}))
    assert {operator.head(h).headers["X-Cache"] for h in files} == {"MISS"}
    assert operator.client.get(unknown).headers["X-Cache"] == "MISS"
    accepted(operator.purge({"type": "all"}))


def test_purge_changes_no_file(operator):
    file = operator.upload(b"still here", max_downloads="1")
    operator.warm(file["filehash"])
    accepted(operator.purge({"type": "all"}))
    answer = operator.client.get(f"{API}/file/{file['filehash']}")
    assert (answer.status_code, answer.get_data()) == (200, b"still here")


@pytest.mark.parametrize(
    "body, fragment",
    [
        ({"type": "everything", "items": []}, "type must be"),
        ({"type": "url"}, "needs items"),
        ({"type": "url", "items": "abc"}, "list of strings"),
        ({"type": "url", "items": [1]}, "list of strings"),
        ({"type": "url", "items": ["/vimeo/api/v1.0/files"]}, "not a file or version URL"),
        ({"type": "url", "items": [f"{API}/v/{'a' * 32}"]}, "no published version"),
        ({"type": "prefix", "items": ["xyz*"]}, "not a filehash prefix"),
        ({"type": "prefix", "items": ["a*b*"]}, "not a filehash prefix"),
        ({"type": "url", "items": ["x"] * 1001}, "at most"),
        ({"type": "all", "items": [], "extra": 1}, "JSON object"),
        ([], "JSON object"),
    ],
)
def test_bad_purges_are_400(make_app, body, fragment):
    operator = FlaskOperator(make_app())
    answer = operator.purge(body)
    assert answer.status_code == 400
    assert answer.get_json()["error"] == "Bad Request"
    assert fragment in answer.get_json()["message"]


def test_purge_needs_the_cache_purge_scope(make_app):
    app = make_app()
    operator = FlaskOperator(app, "files:read", "stats:read")
    assert operator.client.post(f"{API}/purge", json={"type": "all"}).status_code == 401
    assert operator.purge({"type": "all"}).status_code == 403
    assert operator.status("0" * 32).status_code == 403
    allowed = FlaskOperator(app, "cache:purge")
    assert operator.status("0" * 32, token=allowed.token).status_code == 404
    assert operator.status("not-an-id", token=allowed.token).status_code == 404


def test_a_purge_while_the_cache_is_down_is_carried_out_when_it_is_back(make_app, private_redis):
    app = make_app(CACHE_TYPE="RedisCache", CACHE_REDIS_URL=private_redis.url(0), CACHE_RETRY_AFTER=0.5)
    operator = FlaskOperator(app)
    file = operator.upload()
    operator.warm(file["filehash"])
    private_redis.client().save()  # so the restarted server has the entry again
    private_redis.stop()
    answer = operator.purge({"type": "url", "items": [file["url"]]})
    assert answer.status_code == 202
    assert answer.get_json()["status"] == "pending"
    purge_id = answer.get_json()["purge_id"]
    down = operator.status(purge_id)
    assert (down.status_code, down.get_json()["error"]) == (503, "Service Unavailable")
    assert "Retry-After" in down.headers

    private_redis.start()
    deadline = time.monotonic() + 5
    while app.extensions["vimeo_metacache"].owes() and time.monotonic() < deadline:
        time.sleep(0.1)
    record = operator.status(purge_id)
    assert record.status_code == 200
    assert record.get_json()["status"] == "done"
    assert operator.head(file["filehash"]).headers["X-Cache"] == "MISS"


def test_a_purge_record_is_readable_from_every_process_of_the_embedded_default(make_app):
    """`make run` is several gunicorn workers, each with its own in-process cache: the
    record of a purge made through one must be there for GET /purge/<id> on another."""
    one = FlaskOperator(make_app(), "cache:purge")
    other = FlaskOperator(make_app(), "cache:purge")  # the same storage and database
    assert one.app.config["CACHE_TYPE"] == other.app.config["CACHE_TYPE"] == "SimpleCache"
    body = accepted(one.purge({"type": "all"}))
    answer = other.status(body["purge_id"])
    assert answer.status_code == 200, answer.get_data()
    assert answer.get_json()["purge_id"] == body["purge_id"]
    assert answer.get_json()["status"] == "done"
