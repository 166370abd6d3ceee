"""nginx's fast path (issue 8): public files and published versions answered by nginx
from a cached grant, with no Python; everything else, and every change, through the app.

Who answered is read from nginx's access log: ``served=`` is the URI nginx finally
served, ``/f/…`` or ``/v/…`` (a grant) on the fast path, ``/_vimeo_blobs/…`` when the app
answered X-Accel-Redirect, the request's own path when the app sent the answer.

Every check runs on both stacks: blobs on local disk, and blobs in an S3 bucket (where
the grant is a marker and nginx proxies the bucket, or its content cache).
"""

from __future__ import annotations

import http.client
import json
import re
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
import requests
from sqlalchemy import create_engine, text

from support import API, ROOT, SUCCESS_HEADERS
from support.checks import assert_json_error, get, once
from support.operators import bearer
from support.polling import wait_until
from support.uploads import upload

CONTENT = bytes(range(256)) * 40  # 10 KiB


def served(stack, response: requests.Response) -> str:
    line = stack.access_line(response.headers["X-Request-Id"])
    return re.search(r" served=(\S+)", line).group(1)


def by_nginx(stack, response) -> bool:
    # The grant's path, as the access log writes it: its two long segments (the
    # filehash or version id, and the digest) cut to their first 6 characters.
    return re.match(r"^/[fv]/[0-9a-f]{2}/[0-9a-f]{6}\.\.\./[0-9a-f]{6}\.\.\.$", served(stack, response)) is not None


def logged(ident: str) -> str:
    """How the logs write a filehash or version id (nginx.conf, vimeo_api/serving.py)."""
    return ident[:6] + "..."


def hot(stack, path: str) -> requests.Response:
    """GET until nginx answers from its cached grant (the app answers the first request
    and makes the grant; nginx asks the app for it once, then keeps its answer)."""
    deadline = time.monotonic() + 5  # nginx asks again after a change within ~2 s
    while time.monotonic() < deadline:
        answer = get(stack, path)
        assert answer.status_code == 200, answer.text
        if answer.headers.get("X-Cache") == "HIT" and by_nginx(stack, answer):
            return answer
        time.sleep(0.05)
    pytest.fail(f"{path} never reached the fast path: {stack.access_log()[-1500:]}")


def from_cached_grant(stack, path: str, headers: dict, method: str) -> requests.Response:
    """The request answered by nginx from a grant answer it had cached (X-Cache: HIT).
    nginx asks the app again when its answer ends (each second with the bytes in a
    bucket, vimeo_api/grants.py), and that answer says what the app's own lookup did."""
    deadline = time.monotonic() + 5
    while True:
        answer = get(stack, path, headers, method=method)
        if answer.headers.get("X-Cache") == "HIT" or time.monotonic() > deadline:
            return answer


def grant_dirs(stack) -> list[Path]:
    root = Path(stack.storage_dir, "grants")
    return sorted(p for p in root.glob("[fv]/*/*") if p.is_dir()) if root.exists() else []


def public(stack, content: bytes = CONTENT, **fields) -> dict:
    return upload(stack, content, filename="clip.mp4", max_downloads=0, **fields)


def owner(body: dict) -> dict:
    return {"X-Owner-Token": body["owner_token"]}


@pytest.fixture(params=["local", "s3"])
def stack(request):
    """The session's stack on local disk, or on S3 storage, emptied before and after."""
    chosen = request.getfixturevalue("nginx_stack" if request.param == "local" else "nginx_s3_stack")
    chosen.reset()
    yield chosen
    chosen.reset()


# -- what the fast path answers ---------------------------------------------------------

def test_a_hot_public_download_is_answered_by_nginx_alone(stack):
    body = public(stack)
    path = f"/file/{body['filehash']}"
    first = get(stack, path)
    sha = body["sha256"]
    # The app answered the first (X-Accel-Redirect to the blob, or to the bucket's proxy).
    assert first.content == CONTENT
    assert served(stack, first) == ("/_vimeo_s3" if stack.bucket else f"/_vimeo_blobs/{sha[:2]}/{sha[2:4]}/{sha}")
    answer = hot(stack, path)
    assert answer.content == CONTENT
    for name in SUCCESS_HEADERS:
        once(answer, name)
    assert f'"request_id": "{first.headers["X-Request-Id"]}"' in stack.settled_app_log()  # the app answered it
    again_ids = []
    for _ in range(5):
        again = get(stack, path)
        assert (again.status_code, again.content, again.headers["X-Cache"]) == (200, CONTENT, "HIT")
        assert by_nginx(stack, again)
        again_ids.append(again.headers["X-Request-Id"])
    log = stack.settled_app_log()
    assert [rid for rid in again_ids if f'"request_id": "{rid}"' in log] == []  # the app saw none of them


REQUESTS = [
    ("GET", {}),
    ("HEAD", {}),
    ("GET", {"Range": "bytes=0-"}),
    ("GET", {"Range": "bytes=0-99"}),
    ("GET", {"Range": "bytes=0-999999"}),
    ("GET", {"Range": "bytes=-7"}),
    ("GET", {"Range": "bytes=-999999"}),
]
COMPARED = SUCCESS_HEADERS + ("Content-Range",)


@pytest.mark.parametrize("kind", ["file", "version"])
def test_fast_answers_equal_the_apps_for_every_request_they_take(stack, kind):
    """Each request the fast path takes, answered by nginx alone and (the same request
    with a query string, which the fast path never takes) by the app: same status,
    headers and bytes."""
    body = public(stack)
    path = f"/file/{body['filehash']}"
    if kind == "version":
        made = requests.post(stack.base + API + path + "/versions", headers=owner(body), timeout=10)
        assert made.status_code == 201
        path = "/v/" + made.json()["version_id"]
    hot(stack, path)
    for method, headers in REQUESTS:
        fast = from_cached_grant(stack, path, headers, method)
        app = get(stack, path + "?via=app", headers, method=method)
        assert by_nginx(stack, fast) and fast.headers["X-Cache"] == "HIT", (method, headers)
        assert not by_nginx(stack, app), (method, headers)
        assert fast.status_code == app.status_code, (method, headers)
        assert fast.content == app.content, (method, headers)
        for name in COMPARED:
            assert fast.raw.headers.getlist(name) == app.raw.headers.getlist(name), (method, headers, name)
    expected_class = "public, max-age=31536000, immutable" if kind == "version" else "public, max-age=60, s-maxage=3600"
    assert once(fast, "Cache-Control") == expected_class


@pytest.mark.parametrize("headers, status", [
    ({"If-None-Match": "ETAG"}, 304),
    ({"If-Match": "ETAG"}, 200),
    ({"If-Modified-Since": "Sat, 01 Jan 2000 00:00:00 GMT"}, 200),
    ({"If-Unmodified-Since": "Sat, 01 Jan 2000 00:00:00 GMT"}, 412),
    ({"Range": "bytes=5-9"}, 206),
    ({"Range": "bytes=0-1,5-6"}, 206),
    ({"Range": "bytes=20000-"}, 416),
    ({"Range": "bytes=0-4", "If-Range": "ETAG"}, 206),
    ({"X-Password": "anything"}, 200),  # the file has no password: the header is ignored
    ({"Authorization": "Basic dXNlcjpwdw=="}, 200),  # the same, sent the Basic way
])
def test_requests_the_fast_path_cannot_answer_exactly_go_to_the_app(stack, headers, status):
    body = public(stack)
    path = f"/file/{body['filehash']}"
    hot(stack, path)
    headers = {k: v.replace("ETAG", body["etag"]) for k, v in headers.items()}
    answer = get(stack, path, headers)
    assert not by_nginx(stack, answer), headers
    assert answer.status_code == status, answer.text
    # A HEAD with a Range: the app ignores it (RFC 9110 §14.2), nginx would not.
    if "Range" in headers:
        assert not by_nginx(stack, get(stack, path, {"Range": headers["Range"]}, method="HEAD"))


def test_other_spellings_of_the_url_go_to_the_app(stack):
    body = public(stack)
    fh = body["filehash"]
    hot(stack, f"/file/{fh}")
    host, port = stack.base.removeprefix("http://").split(":")
    for path in (f"/file/{fh}?x=1", f"/file/%{ord(fh[0]):02x}{fh[1:]}", f"/./file/{fh}", f"/file/x/../{fh}"):
        # http.client sends the path as it is (requests would normalise it).
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        conn.request("GET", API + path)
        raw = conn.getresponse()
        content, request_id = raw.read(), raw.getheader("X-Request-Id")
        conn.close()
        if "." not in path:  # the app does not resolve dot segments: 404, as before
            assert (raw.status, content) == (200, CONTENT), path
        line = stack.access_line(request_id)
        assert " served=/f/" not in line, path


# -- never for a file whose answer is not shared ---------------------------------------

def test_password_and_limited_files_are_never_answered_from_the_shared_cache(stack):
    protected = public(stack, password="open sesame")
    limited = upload(stack, CONTENT, max_downloads=3)
    for _ in range(4):
        answer = get(stack, f"/file/{protected['filehash']}", {"X-Password": "open sesame"})
        assert answer.status_code == 200 and not by_nginx(stack, answer)
        assert once(answer, "Cache-Control") == "private, no-cache"
        assert_json_error(get(stack, f"/file/{protected['filehash']}"), 401, "Unauthorized")
    for _ in range(3):
        answer = get(stack, f"/file/{limited['filehash']}")
        assert answer.status_code == 200 and not by_nginx(stack, answer)
    assert_json_error(get(stack, f"/file/{limited['filehash']}"), 410, "Gone")
    assert grant_dirs(stack) == []
    token = requests.post(stack.base + API + f"/file/{protected['filehash']}/tokens", headers=owner(protected),
                          json={"expires_in": 60}, timeout=10).json()["token"]
    for _ in range(3):
        answer = get(stack, f"/t/{token}")
        assert answer.status_code == 200 and not by_nginx(stack, answer)
    assert grant_dirs(stack) == []


# -- changes stop the fast path before their request answers ---------------------------

def test_delete_stops_the_fast_path_at_once(stack):
    body = public(stack)
    path = f"/file/{body['filehash']}"
    hot(stack, path)
    made = requests.post(stack.base + API + path + "/versions", headers=owner(body), timeout=10).json()
    hot(stack, "/v/" + made["version_id"])
    assert requests.delete(stack.base + API + path, headers=owner(body), timeout=10).status_code == 202
    assert_json_error(get(stack, path), 410, "Gone")
    assert_json_error(get(stack, "/v/" + made["version_id"]), 410, "Gone")
    assert grant_dirs(stack) == []


def test_replace_serves_the_new_bytes_at_once(stack):
    body = public(stack)
    path = f"/file/{body['filehash']}"
    hot(stack, path)
    new = b"second content " * 100
    replaced = requests.put(stack.base + API + path, data=new, headers=owner(body), timeout=10)
    assert replaced.status_code == 200
    answer = get(stack, path)
    assert answer.content == new and answer.headers["ETag"] == replaced.json()["etag"]
    answer = hot(stack, path)
    assert answer.content == new and answer.headers["ETag"] == replaced.json()["etag"]


@pytest.mark.parametrize("change, status", [({"password": "now"}, 401), ({"max_downloads": 3}, 200)])
def test_patch_ending_sharing_stops_the_fast_path_at_once(stack, change, status):
    body = public(stack)
    path = f"/file/{body['filehash']}"
    hot(stack, path)
    assert requests.patch(stack.base + API + path, json=change, headers=owner(body), timeout=10).status_code == 200
    answer = get(stack, path)
    assert answer.status_code == status and not by_nginx(stack, answer)
    if status == 200:  # counted from now on: the third (the first was counted too) is the last
        assert get(stack, path).status_code == 200
        assert_json_error(get(stack, path), 410, "Gone")


def test_patch_expiry_gives_the_fast_path_a_new_grant(stack):
    body = public(stack)
    path = f"/file/{body['filehash']}"
    before = served(stack, hot(stack, path))
    assert requests.patch(stack.base + API + path, json={"expires_in": 3600}, headers=owner(body),
                          timeout=10).status_code == 200
    after = served(stack, hot(stack, path))
    assert before != after  # the old cached answer named a grant that is gone


@pytest.mark.parametrize("purge", [
    lambda body: {"type": "url", "items": [body["url"]]},
    lambda body: {"type": "prefix", "items": [body["filehash"][:3] + "*"]},
    lambda body: {"type": "all"},
])
def test_purge_sends_the_next_request_to_the_app(stack, purge):
    token = stack_operator_token(stack, "cache:purge")
    body = public(stack)
    path = f"/file/{body['filehash']}"
    hot(stack, path)
    answer = requests.post(stack.base + API + "/purge", json=purge(body), headers=bearer(token), timeout=10)
    assert answer.status_code == 202 and answer.json()["status"] == "done"
    assert grant_dirs(stack) == []
    after = get(stack, path)
    assert after.content == CONTENT and not by_nginx(stack, after)
    hot(stack, path)  # and fast again


def test_expiry_ends_the_fast_path_no_later_than_expires_at(stack):
    body = public(stack, expires_in=4)
    expires_at = datetime.strptime(body["expires_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp()
    path = f"/file/{body['filehash']}"
    hot(stack, path)
    fast_seen = False
    while True:
        sent = time.time()
        answer = get(stack, path)
        if answer.status_code == 410:
            break
        assert answer.status_code == 200
        assert sent < expires_at, "served after expires_at"
        fast_seen |= by_nginx(stack, answer)
        assert sent < expires_at + 2
        time.sleep(0.05)
    assert fast_seen
    assert sent < expires_at + 1.5  # 410 as soon as it expired (plus one request's time)


# -- the internal parts are not reachable -----------------------------------------------

def test_grant_locations_are_internal(stack):
    body = public(stack)
    hot(stack, f"/file/{body['filehash']}")
    fh = body["filehash"]
    for path in (f"/_vimeo/grant/f/{fh[:2]}/{fh}", "/_vimeo_grant", f"/f/{fh[:2]}/{fh}"):
        answer = requests.get(stack.base + path, timeout=10)
        assert_json_error(answer, 404, "Not Found")


def stack_operator_token(stack, scope: str) -> str:
    target = stack.target()
    try:
        return target.operator_token(scope)
    finally:
        target.close()


# -- what nginx answered is counted by the sweep ----------------------------------------

def test_the_sweep_counts_the_downloads_nginx_answered(stack):
    body = public(stack)
    path = f"/file/{body['filehash']}"
    made = requests.post(stack.base + API + path + "/versions", headers=owner(body), timeout=10).json()
    hot(stack, "/v/" + made["version_id"])  # versions use no downloads: never counted
    answers = [get(stack, path) for _ in range(6)]
    answers.append(get(stack, path, {"Range": "bytes=0-99"}))
    answers.append(hot(stack, path))
    assert all(a.status_code in (200, 206) for a in answers)
    by = [by_nginx(stack, a) for a in answers]
    assert by[0] is False and sum(by) >= 5  # the first (and any fallback) was the app's
    sent = sum(len(a.content) for a in answers)

    def counted():
        engine = create_engine(stack.db_url)
        try:
            with engine.connect() as conn:
                return tuple(conn.execute(text("select downloads, bytes_served from files where filehash = :h"),
                                          {"h": body["filehash"]}).one())
        finally:
            engine.dispose()

    assert counted()[0] == len(answers) - sum(by)  # the app counted its own at once
    # nginx writes its log line just after the answer: the sweep must find them all.
    wait_until(lambda: len([line for line in stack.fast_downloads() if f"/{body['filehash']}/" in line]) >= sum(by),
               10, "nginx did not log its fast downloads")
    sweep = subprocess.run([sys.executable, "manage.py", "files", "sweep", "--json"], cwd=ROOT, env=stack.env,
                           capture_output=True, text=True, timeout=60)
    assert sweep.returncode == 0, sweep.stderr
    assert json.loads(sweep.stdout)["fast_downloads"] >= sum(by)
    assert counted() == (len(answers), sent)
    # A second sweep finds nothing new.
    again = subprocess.run([sys.executable, "manage.py", "files", "sweep", "--json"], cwd=ROOT, env=stack.env,
                           capture_output=True, text=True, timeout=60)
    assert json.loads(again.stdout)["fast_downloads"] == 0
    assert counted() == (len(answers), sent)
