"""Conformance: the metadata cache, the purge and the password limit behave the same on
every deployment (the embedded app on SQLite and PostgreSQL, and the stack: nginx and
gunicorn with the cache and the limits in Redis).

nginx drops every header but a few from an X-Accel-Redirect answer, so ``X-Cache`` is
checked on the answers the app gives itself (HEAD, 304, 404, 410, 401).
"""

from __future__ import annotations

from support.operators import bearer
from support.uploads import upload


def path(body: dict) -> str:
    return f"/file/{body['filehash']}"


def test_cached_answers_are_marked_and_equal_to_uncached(target):
    public = upload(target, max_downloads=0)
    gone = upload(target, b"gone", max_downloads=0)
    target.request("DELETE", path(gone), headers={"X-Owner-Token": gone["owner_token"]})
    unknown = "/file/" + "c" * 32
    for name, method, where, headers, status in [
        ("head", "HEAD", path(public), {}, 200),
        ("304", "GET", path(public), {"If-None-Match": public["etag"]}, 304),
        ("404", "GET", unknown, {}, 404),
        ("410", "GET", path(gone), {}, 410),
    ]:
        first = target.request(method, where, headers=headers)
        second = target.request(method, where, headers=headers)
        assert (first.status, second.status) == (status, status), name
        assert (first.headers["X-Cache"], second.headers["X-Cache"]) in {("MISS", "HIT"), ("HIT", "HIT")}, name
        for header in ("ETag", "Last-Modified", "Cache-Control", "Content-Length", "Content-Type"):
            assert first.headers.get(header) == second.headers.get(header), (name, header)
        if first.body:  # an error body: the same but for its request id
            assert {**first.json(), "request_id": None} == {**second.json(), "request_id": None}, name


def test_a_one_time_file_cached_before_its_download_is_gone_after(target):
    body = upload(target, b"one time only")
    assert target.request("HEAD", path(body)).status == 200
    assert target.request("HEAD", path(body)).headers["X-Cache"] == "HIT"
    answer = target.request("GET", path(body))
    assert (answer.status, answer.body) == (200, b"one time only")
    assert target.request("HEAD", path(body)).status == 410
    assert target.request("GET", path(body)).status == 410
    assert target.request("GET", path(body), headers={"If-None-Match": body["etag"]}).status == 410


def test_changes_are_seen_at_once(target):
    body = upload(target, b"version one", max_downloads=0)
    owner = {"X-Owner-Token": body["owner_token"]}
    target.request("HEAD", path(body))
    assert target.request("GET", path(body), headers={"If-None-Match": body["etag"]}).status == 304

    replaced = target.request("PUT", path(body), data=b"version two", headers=owner)
    assert replaced.status == 200
    answer = target.request("GET", path(body), headers={"If-None-Match": body["etag"]})
    assert (answer.status, answer.body) == (200, b"version two")
    assert answer.headers["ETag"] == replaced.json()["etag"]

    assert target.request("PATCH", path(body), json={"password": "now"}, headers=owner).status == 200
    assert target.request("HEAD", path(body)).status == 401
    assert target.request("HEAD", path(body), headers={"X-Password": "now"}).status == 200

    assert target.request("DELETE", path(body), headers=owner).status == 202
    assert target.request("HEAD", path(body), headers={"X-Password": "now"}).status == 410


def test_purge(target):
    token = target.operator_token("cache:purge")
    body = upload(target, max_downloads=0)
    target.request("HEAD", path(body))
    assert target.request("HEAD", path(body)).headers["X-Cache"] == "HIT"
    answer = target.request("POST", "/purge", json={"type": "url", "items": [body["url"]]}, headers=bearer(token))
    assert answer.status == 202
    assert answer.json()["status"] == "done"
    assert target.request("HEAD", path(body)).headers["X-Cache"] == "MISS"
    record = target.request("GET", f"/purge/{answer.json()['purge_id']}", headers=bearer(token))
    assert record.status == 200 and record.json()["items"] == [body["url"]]

    target.request("HEAD", path(body))
    answer = target.request("POST", "/purge", json={"type": "prefix", "items": [body["filehash"][:2] + "*"]},
                            headers=bearer(token))
    assert answer.status == 202
    assert target.request("HEAD", path(body)).headers["X-Cache"] == "MISS"

    target.request("HEAD", path(body))
    assert target.request("POST", "/purge", json={"type": "all"}, headers=bearer(token)).status == 202
    assert target.request("HEAD", path(body)).headers["X-Cache"] == "MISS"
    assert target.request("POST", "/purge", json={"type": "all"}).status == 401


def test_ten_wrong_passwords_then_429(target):
    body = upload(target, password="right", max_downloads=0)
    for _ in range(10):
        assert target.request("GET", path(body), headers={"X-Password": "wrong"}).status == 401
    answer = target.request("GET", path(body), headers={"X-Password": "right"})
    assert answer.status == 429
    assert answer.json()["error"] == "Too Many Requests"
    assert int(answer.headers["Retry-After"]) >= 1
    assert answer.headers["X-RateLimit-Limit"] == "10"
