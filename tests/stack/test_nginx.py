"""nginx in front of the app (issue 3): X-Accel downloads, nginx's own errors as JSON,
logs without passwords, the raw-upload offload, and HTTP semantics through nginx.

The conformance suite (tests/test_api.py) runs every contract check through this stack
too; these tests look at what only the stack has: who sent the bytes, what nginx logged,
what it left on disk, and the answers nginx gives by itself.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import secrets
from datetime import timedelta
from pathlib import Path

import pytest
import requests
from werkzeug.http import http_date, parse_date

from support import API, ERROR_KEYS, SUCCESS_HEADERS
from support.checks import assert_json_error, get, once
from support.polling import eventually
from support.stacks import blob_path, files_in
from support.uploads import upload
from vimeo_api.http_semantics import Representation, evaluate_range

MiB = 1024 * 1024


# -- downloads: nginx sends the bytes --------------------------------------------------

def test_download_bytes_are_sent_by_nginx_after_the_apps_x_accel_redirect(stack):
    content = os.urandom(300 * 1024 + 7)
    body = upload(stack, content, "video.mp4", max_downloads=0)
    sha = hashlib.sha256(content).hexdigest()

    answer = get(stack, "/file/" + body["filehash"])
    assert answer.status_code == 200
    assert answer.content == content
    assert once(answer, "Content-Length") == str(len(content))
    for name in SUCCESS_HEADERS:
        once(answer, name)
    assert answer.headers["ETag"] == f'"{sha}"'
    assert answer.headers["Last-Modified"] == http_date(parse_date(answer.headers["Last-Modified"]))
    assert answer.headers["Cache-Control"] == "public, max-age=60, s-maxage=3600"
    assert answer.headers["Content-Type"] == "video/mp4"
    assert answer.headers["Accept-Ranges"] == "bytes"
    assert answer.headers["X-Content-Type-Options"] == "nosniff"
    # Neither the redirect nor the private copies of the validators reach the client.
    assert not [h for h in answer.headers if h.lower().startswith(("x-accel", "x-file-"))]

    # nginx served the blob: its log shows the internal location as the final URI...
    line = stack.access_line(answer.headers["X-Request-Id"])
    assert f"served=/_vimeo_blobs/{sha[:2]}/{sha[2:4]}/{sha} " in line
    assert " 200 " in line and f" {len(content)} " in line
    # ...and the app itself answers that request with X-Accel-Redirect and no bytes.
    direct = get(stack, "/file/" + body["filehash"], base=stack.app_base)
    assert direct.status_code == 200
    assert direct.headers["X-Accel-Redirect"] == f"/_vimeo_blobs/{sha[:2]}/{sha[2:4]}/{sha}"
    assert direct.headers["X-File-ETag"] == f'"{sha}"'
    assert direct.headers["X-File-Last-Modified"] == answer.headers["Last-Modified"]
    assert direct.headers["X-File-Cache-Control"] == "public, max-age=60, s-maxage=3600"
    assert "Accept-Ranges" not in direct.headers  # nginx adds its own; it would be doubled
    assert direct.content == b""


def test_one_time_download_through_nginx_then_gone(stack):
    body = upload(stack, b"once only\n", "once.txt")
    first = get(stack, "/file/" + body["filehash"])
    assert (first.status_code, first.content) == (200, b"once only\n")
    assert once(first, "Cache-Control") == "private, no-store"
    assert "served=/_vimeo_blobs/" in stack.access_line(first.headers["X-Request-Id"])
    assert_json_error(get(stack, "/file/" + body["filehash"]), 410, "Gone")


def test_head_is_answered_by_the_app_with_the_headers_of_get(stack):
    content = os.urandom(4096)
    body = upload(stack, content, max_downloads=0)
    head = get(stack, "/file/" + body["filehash"], method="HEAD")
    got = get(stack, "/file/" + body["filehash"])
    assert head.status_code == 200 and head.content == b""
    for name in SUCCESS_HEADERS:
        assert once(head, name) == once(got, name), name
    assert "served=/vimeo/api/v1.0/file/" in stack.access_line(head.headers["X-Request-Id"])


# -- HTTP semantics through nginx (beyond the conformance suite) -------------------------

@pytest.fixture
def unlimited_file(stack):
    content = bytes(range(256)) * 40  # 10240 bytes, every window distinct enough
    body = upload(stack, content, "data.txt", max_downloads=0)
    head = get(stack, "/file/" + body["filehash"], method="HEAD")
    return body, content, head.headers["Last-Modified"]


def test_single_range_through_nginx(stack, unlimited_file):
    body, content, _ = unlimited_file
    answer = get(stack, "/file/" + body["filehash"], {"Range": "bytes=100-1123"})
    assert answer.status_code == 206
    assert answer.content == content[100:1124]
    assert once(answer, "Content-Range") == f"bytes 100-1123/{len(content)}"
    assert once(answer, "Content-Length") == "1024"
    assert once(answer, "ETag") == body["etag"]
    assert once(answer, "Accept-Ranges") == "bytes"
    assert "served=/_vimeo_blobs/" in stack.access_line(answer.headers["X-Request-Id"])


def test_three_ranges_are_one_multipart_answer(stack, unlimited_file):
    body, content, _ = unlimited_file
    answer = get(stack, "/file/" + body["filehash"], {"Range": "bytes=0-9,100-109,-5"})
    assert answer.status_code == 206
    assert once(answer, "Content-Length") == str(len(answer.content))
    boundary = re.search(r"boundary=(\S+)", answer.headers["Content-Type"])[1]
    parts = answer.content.split(b"--" + boundary.encode())[1:-1]
    datas = [part.split(b"\r\n\r\n", 1)[1][:-2] for part in parts]
    assert datas == [content[0:10], content[100:110], content[-5:]]
    assert b"Content-Range: bytes 100-109/10240" in parts[1]


def test_unsatisfiable_range_is_the_apps_416_and_uses_no_download(stack, unlimited_file):
    body, content, _ = unlimited_file
    answer = get(stack, "/file/" + body["filehash"], {"Range": "bytes=20000-"})
    assert_json_error(answer, 416, "Range Not Satisfiable")
    assert once(answer, "Content-Range") == f"bytes */{len(content)}"
    assert "Content-Disposition" not in answer.headers


@pytest.mark.parametrize(
    "value",
    [
        "bytes=abc", "bytes=9-0", "items=0-5", "bytes 0-5",  # invalid: ignored (RFC 9110 §14.2)
        "bytes=0-9,", "bytes=0-99999999999999999999999", "bytes= 0-9", "BYTES=0-9",  # odd but valid
        "bytes=50-59,0-9,5-14", "bytes=0-4,5-9",  # merged and sorted by the app
        "bytes=0-9,5000-6000",  # one range past the end: dropped
        "bytes=" + ",".join(f"{i * 10}-{i * 10}" for i in range(20)),  # too many ranges: the whole file
        "bytes=0-0,-1", "bytes=-20000",
    ],
)
def test_range_answers_are_the_apps_decision(stack, unlimited_file, value):
    """nginx parses Range its own way (it answers 416 to values the app ignores, and never
    merges ranges): whoever sends the bytes, the answer is what http_semantics decides."""
    body, content, last_modified = unlimited_file
    rep = Representation(etag=body["sha256"], last_modified=parse_date(last_modified), size=len(content))
    decision = evaluate_range("GET", {"Range": value}, rep)
    answer = get(stack, "/file/" + body["filehash"], {"Range": value})
    assert answer.status_code == decision.status
    once(answer, "Accept-Ranges")
    once(answer, "ETag")
    if decision.status == 200:
        assert answer.content == content
        assert "Content-Range" not in answer.headers
    elif len(decision.ranges) == 1:
        (start, stop), = decision.ranges
        assert answer.content == content[start:stop]
        assert once(answer, "Content-Range") == decision.content_range
    else:
        boundary = re.search(r"boundary=(\S+)", answer.headers["Content-Type"])[1]
        parts = answer.content.split(b"--" + boundary.encode())[1:-1]
        assert [p.split(b"\r\n\r\n", 1)[1][:-2] for p in parts] == [content[a:b] for a, b in decision.ranges]
    assert once(answer, "Content-Length") == str(len(answer.content))


@pytest.mark.parametrize(
    "headers",
    [{"Range": "bytes=abc"}, {"Range": "bytes=9-0"}, {"Range": "bytes=0-9", "If-Range": '"an-old-etag"'}],
    ids=["malformed", "backwards", "if-range-stale"],
)
def test_whole_file_answers_to_a_range_request_are_sent_by_nginx(stack, unlimited_file, headers):
    """SPEC 1: Python never streams file content in production, also when the app ignores
    the Range (malformed, or an If-Range that does not hold: a download resumed after the
    file changed). nginx must then ignore the Range too (its /_vimeo_whole/ location)."""
    body, content, _ = unlimited_file
    answer = get(stack, "/file/" + body["filehash"], headers)
    assert (answer.status_code, answer.content) == (200, content)
    for name in SUCCESS_HEADERS:
        once(answer, name)
    assert "Content-Range" not in answer.headers
    assert "served=/_vimeo_whole/" in stack.access_line(answer.headers["X-Request-Id"])


def test_if_range_through_nginx(stack, unlimited_file):
    body, content, last_modified = unlimited_file
    url = "/file/" + body["filehash"]
    by_date = get(stack, url, {"Range": "bytes=0-9", "If-Range": last_modified})
    assert (by_date.status_code, by_date.content) == (206, content[:10])
    later = http_date(parse_date(last_modified) + timedelta(seconds=1))
    stale_date = get(stack, url, {"Range": "bytes=0-9", "If-Range": later})
    assert (stale_date.status_code, stale_date.content) == (200, content)
    weak = get(stack, url, {"Range": "bytes=0-9", "If-Range": "W/" + body["etag"]})
    assert (weak.status_code, weak.content) == (200, content)  # If-Range compares strongly
    once(weak, "Accept-Ranges")


def test_conditional_answers_through_nginx(stack, unlimited_file):
    body, content, last_modified = unlimited_file
    url = "/file/" + body["filehash"]

    not_modified = get(stack, url, {"If-None-Match": body["etag"]})
    assert (not_modified.status_code, not_modified.content) == (304, b"")
    assert once(not_modified, "ETag") == body["etag"]

    # nginx would compare If-Match with its own ETag: the app sends these bytes itself.
    matched = get(stack, url, {"If-Match": body["etag"]})
    assert (matched.status_code, matched.content) == (200, content)
    for name in SUCCESS_HEADERS:
        once(matched, name)
    assert "served=/vimeo/api/v1.0/file/" in stack.access_line(matched.headers["X-Request-Id"])

    # nginx would evaluate If-Unmodified-Since again, against the blob's mtime, and
    # answer 412 to a date it cannot parse: the app sends these bytes itself too
    # (tests/stack/test_conditional.py compares every conditional header).
    unmodified = get(stack, url, {"If-Unmodified-Since": last_modified})
    assert (unmodified.status_code, unmodified.content) == (200, content)
    assert "served=/vimeo/api/v1.0/file/" in stack.access_line(unmodified.headers["X-Request-Id"])
    earlier = http_date(parse_date(last_modified) - timedelta(seconds=1))
    stale = get(stack, url, {"If-Unmodified-Since": earlier})
    assert_json_error(stale, 412, "Precondition Failed")
    assert "ustatus=412" in stack.access_line(stale.headers["X-Request-Id"])  # the app's


def test_blob_mtime_is_never_later_than_last_modified(stack):
    content = os.urandom(1000)
    body = upload(stack, content, max_downloads=0)
    last_modified = parse_date(get(stack, "/file/" + body["filehash"], method="HEAD").headers["Last-Modified"])
    assert blob_path(stack.storage_dir, body["sha256"]).stat().st_mtime <= last_modified.timestamp()


# -- nginx's own answers are the API's JSON errors ---------------------------------------

def test_nginx_413_is_json_and_leaves_nothing(stack):
    # A raw body one byte over the limit; a multipart body over the limit and the framing
    # a multipart body may add (MULTIPART_OVERHEAD, 64 KiB by default).
    over = b"\0" * (16 * MiB + 1)
    way_over = b"\0" * (16 * MiB + 64 * 1024 + 1)
    for route, kwargs in (("/upload/big.bin", {"data": over}), ("/file", {"files": {"file": ("big.bin", way_over)}})):
        answer = requests.put(stack.base + API + route, timeout=60, **kwargs)
        body = assert_json_error(answer, 413, "Request Entity Too Large")
        # nginx answered before the app saw anything.
        assert "ustatus=- urt=-" in stack.access_line(body["request_id"])
    # One byte over as multipart: within nginx's allowance, the app holds the file part
    # to the limit itself.
    answer = requests.put(stack.base + API + "/file", files={"file": ("big.bin", over)}, timeout=60)
    body = assert_json_error(answer, 413, "Request Entity Too Large")
    assert "ustatus=413" in stack.access_line(body["request_id"])
    assert eventually(lambda: files_in(stack.body_dir) == [])
    assert files_in(Path(stack.storage_dir, "blobs")) == []


def test_direct_request_for_the_internal_location_is_404_json(stack):
    body = upload(stack, b"secret bytes", max_downloads=0)
    sha = body["sha256"]
    for path in (f"/_vimeo_blobs/{sha[:2]}/{sha[2:4]}/{sha}", f"/_vimeo_whole/{sha[:2]}/{sha[2:4]}/{sha}",
                 "/_vimeo_blobs/", "/_vimeo_blobs/x.html"):
        answer = requests.get(stack.base + path, timeout=10)
        assert_json_error(answer, 404, "Not Found")
        assert b"secret bytes" not in answer.content
    # The app never answers X-Accel-Redirect to a client-supplied header either.
    answer = requests.get(stack.base + "/nothing", headers={"X-Accel-Redirect": f"/_vimeo_blobs/{sha[:2]}/{sha[2:4]}/{sha}"}, timeout=10)
    assert_json_error(answer, 404, "Not Found")


def test_gunicorn_stopped_is_502_json(own_stack):
    s = own_stack()
    body = upload(s, b"bytes", max_downloads=0)
    s.stop_gunicorn()
    secret = "secret-" + secrets.token_hex(8)
    answer = get(s, f"/file/{body['filehash']}?password={secret}")
    assert_json_error(answer, 502, "Bad Gateway")
    assert answer.headers["Retry-After"] == "5"
    assert once(answer, "Cache-Control") == "no-store"
    raw = requests.put(s.base + API + "/upload/x.bin", data=b"x" * 1000, timeout=10)
    assert_json_error(raw, 502, "Bad Gateway")
    assert eventually(lambda: files_in(s.body_dir) == [])  # nginx dropped the body it wrote
    # nginx's error log is at "crit": its request line (with the query) never gets there.
    assert secret not in s.error_log() and secret not in s.access_log()


def test_metrics_are_for_loopback_only(stack):
    """``allow 127.0.0.1; deny all``: a client from 127.0.0.2 (still this machine, but
    not the address nginx admits) gets a JSON 403 from nginx."""
    host, port = stack.base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10,
                                      source_address=("127.0.0.2", 0))
    try:
        conn.request("GET", "/metrics")
        response = conn.getresponse()
        body = json.loads(response.read())
    finally:
        conn.close()
    assert response.status == 403
    assert body["error"] == "Forbidden" and set(body) == ERROR_KEYS
    # From 127.0.0.1 the request reaches the app (whatever it answers there).
    local = requests.get(stack.base + "/metrics", timeout=10)
    assert "ustatus=- urt=-" not in stack.access_line(local.headers["X-Request-Id"])


# -- logs ------------------------------------------------------------------------------

def test_a_query_password_reaches_no_log(stack):
    secret = "secret-XYZ-" + secrets.token_hex(8)
    body = upload(stack, b"protected\n", "p.txt", max_downloads=0, password=secret)
    url = "/file/" + body["filehash"]
    right = get(stack, f"{url}?password={secret}")
    assert (right.status_code, right.content) == (200, b"protected\n")
    wrong = get(stack, f"{url}?password={secret}-wrong")
    assert_json_error(wrong, 401, "Unauthorized")
    unknown = get(stack, f"/file/{'0' * 32}?password={secret}")
    assert_json_error(unknown, 404, "Not Found")
    raw = requests.put(f"{stack.base}{API}/upload/q.txt?password={secret}", data=b"q", timeout=10)
    assert raw.status_code == 201

    for answer in (right, wrong, unknown, raw):
        rid = answer.headers["X-Request-Id"]
        stack.access_line(rid)  # nginx logged the request (path, no query)...
        assert eventually(lambda: rid in stack.app_log())  # ...and the app, under nginx's id
    access, app_log = stack.access_log(), stack.app_log()
    assert f'"GET {API}/file/{body["filehash"][:6]}... HTTP/1.1" 200' in access
    for log in (access, stack.error_log(), app_log):
        assert secret not in log
        assert "password=" not in log


def test_nginx_request_id_is_the_apps(stack):
    answer = get(stack, "/file/" + "f" * 32)
    body = assert_json_error(answer, 404, "Not Found")
    line = stack.access_line(body["request_id"])
    assert "ustatus=404" in line  # the app's answer, carrying nginx's $request_id
    assert re.fullmatch(r"[0-9a-f]{32}", body["request_id"])


# -- raw-PUT upload offload ------------------------------------------------------------

def test_raw_upload_is_written_by_nginx_and_renamed_by_the_app(stack):
    content = os.urandom(3 * MiB + 123)
    answer = requests.put(stack.base + API + "/upload/clip.mp4", data=content,
                          headers={"X-Max-Downloads": "0"}, timeout=60)
    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert body["size"] == len(content)
    assert body["sha256"] == hashlib.sha256(content).hexdigest()
    assert body["content_type"] == "video/mp4"
    stored = blob_path(stack.storage_dir, body["sha256"])
    assert stored.read_bytes() == content
    assert stored.stat().st_mode & 0o777 == 0o640  # the service's user and group only
    assert eventually(lambda: files_in(stack.body_dir) == [])  # renamed: nothing for nginx to clean
    assert files_in(Path(stack.storage_dir, "tmp")) == []
    assert stack.error_log() == ""  # nginx's cleanup found the file gone without complaint
    assert get(stack, "/file/" + body["filehash"]).content == content


def test_raw_upload_chunked_and_empty_through_nginx(stack):
    chunks = [os.urandom(70_000) for _ in range(5)]
    chunked = requests.put(stack.base + API + "/upload/c.bin", data=iter(chunks), timeout=60)
    assert chunked.status_code == 201, chunked.text
    assert chunked.json()["sha256"] == hashlib.sha256(b"".join(chunks)).hexdigest()
    empty = requests.put(stack.base + API + "/upload/e.bin", data=b"", timeout=10)
    assert empty.status_code == 201, empty.text
    assert empty.json()["size"] == 0
    assert eventually(lambda: files_in(stack.body_dir) == [])


def test_a_client_cannot_name_the_body_file(stack):
    """Through nginx the header is always nginx's own: a planted file is never adopted."""
    stack.body_dir.mkdir(parents=True, exist_ok=True)
    planted = stack.body_dir / "planted"
    planted.write_bytes(b"planted bytes")
    answer = requests.put(stack.base + API + "/upload/real.txt", data=b"the real body",
                          headers={"X-Vimeo-Body-File": str(planted)}, timeout=10)
    assert answer.status_code == 201
    assert answer.json()["sha256"] == hashlib.sha256(b"the real body").hexdigest()
    assert planted.read_bytes() == b"planted bytes"
    # Elsewhere nginx blanks the header: a multipart upload stores what it carries.
    multipart = upload(stack, b"multipart body", "m.txt")
    assert multipart["sha256"] == hashlib.sha256(b"multipart body").hexdigest()
    planted.unlink()


def test_an_app_without_offload_behind_nginx_refuses_instead_of_storing_nothing(own_stack):
    """nginx keeps raw upload bodies; an app started without VIMEO_UPLOAD_OFFLOAD would
    otherwise read an empty stream and store an empty file. The app cannot tell this
    request from a client's who sent the header to gunicorn directly, so it is a 400
    (issue 13: no 5xx a client can provoke); its log tells the operator."""
    s = own_stack(offload=False)
    answer = requests.put(s.base + API + "/upload/lost.bin", data=b"x" * 5000, timeout=10)
    assert_json_error(answer, 400, "Bad Request")
    assert eventually(lambda: "VIMEO_UPLOAD_OFFLOAD=1" in s.app_log())
    assert files_in(Path(s.storage_dir, "blobs")) == []
    assert eventually(lambda: files_in(s.body_dir) == [])
