"""The stack with its bytes in an S3 bucket (issue 14): nginx fetches them through the
presigned GETs the app names, and nothing of the store reaches a client; uploads stream
into the bucket and a cut-off one leaves nothing there; a stopped store is a JSON 503
with Retry-After, and service resumes by itself when it returns.

The store is a real ``rclone serve s3`` process (deploy/s3server.py). The conformance
suite (tests/test_api.py, target ``stack-s3``) and the fast-path checks
(tests/stack/test_fastpath.py) run on this stack too; these tests look at what only it
has: the bucket behind the answers, the store's headers, its failures.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

from deploy.s3server import start_rclone
from support import API, SUCCESS_HEADERS
from support.checks import assert_json_error, get, once
from support.polling import eventually, wait_until
from support.stacks import start_stack
from support.uploads import upload

MiB = 1024 * 1024
# What a download through nginx may carry besides SPEC 3.2's headers: nginx's own, the
# cache's verdict, the request id, and Content-Range on a 206. Anything else came from
# somewhere it should not (the store's ETag, x-amz-*, rclone's Mtime, CORS...).
# nginx.conf adds its own, and the edge cache's Surrogate-Key (hashed: vimeo_api/edge.py).
NGINX_OWN = {"server", "date", "connection", "keep-alive", "x-cache", "x-request-id", "content-range", "surrogate-key"}
ALLOWED = {name.lower() for name in SUCCESS_HEADERS} | NGINX_OWN


@pytest.fixture
def stack(nginx_s3_stack):
    """The session's S3 stack with empty tables and an empty bucket prefix."""
    nginx_s3_stack.reset()
    yield nginx_s3_stack
    nginx_s3_stack.reset()


def served(stack, response: requests.Response) -> str:
    return re.search(r" served=(\S+)", stack.access_line(response.headers["X-Request-Id"])).group(1)


def assert_only_the_apps_headers(answer: requests.Response) -> None:
    extra = {name.lower() for name in answer.headers} - ALLOWED
    assert not extra, f"headers of the store reached the client: {sorted(extra)}"
    for name in SUCCESS_HEADERS:
        once(answer, name)


def content_cached(stack, sha256: str) -> bool:
    """Whether nginx's content cache holds this blob: its file is named by the MD5 of the
    cache key (the SHA-256), in directories of its last characters (levels=1:2)."""
    name = hashlib.md5(sha256.encode()).hexdigest()
    return Path(stack.settings.runtime_dir, "content_cache", name[-1], name[-3:-1], name).is_file()


# -- downloads: nginx proxies the bucket ----------------------------------------------------

def test_a_download_is_proxied_from_the_bucket_with_the_apps_headers_only(stack):
    content = os.urandom(300 * 1024 + 7)
    sha = hashlib.sha256(content).hexdigest()
    body = upload(stack, content, "video.mp4", max_downloads=3)
    assert stack.bucket.keys() == [f"blobs/{sha[:2]}/{sha[2:4]}/{sha}"]

    answer = get(stack, "/file/" + body["filehash"])
    assert (answer.status_code, answer.content) == (200, content)
    assert_only_the_apps_headers(answer)
    assert answer.headers["ETag"] == f'"{sha}"'
    assert answer.headers["Content-Type"] == "video/mp4"
    assert answer.headers["Cache-Control"] == "private, no-store"
    assert once(answer, "Accept-Ranges") == "bytes"
    line = stack.access_line(answer.headers["X-Request-Id"])
    assert " served=/_vimeo_s3 " in line
    # Two upstreams: the app (its X-Accel-Redirect), then the store.
    assert f"upstream={stack.app_base.split('//')[1]} : {stack.bucket.server.host}:{stack.bucket.server.port} " in line

    part = get(stack, "/file/" + body["filehash"], {"Range": "bytes=1000-1999"})
    assert (part.status_code, part.content) == (206, content[1000:2000])
    assert once(part, "Content-Range") == f"bytes 1000-1999/{len(content)}"
    assert_only_the_apps_headers(part)
    # A private file's bytes are never kept in nginx's content cache.
    assert not content_cached(stack, sha)


def test_the_app_names_a_presigned_get_of_the_blob(stack):
    content = os.urandom(5000)
    sha = hashlib.sha256(content).hexdigest()
    body = upload(stack, content, max_downloads=2)
    direct = get(stack, "/file/" + body["filehash"], base=stack.app_base)
    assert (direct.status_code, direct.content) == (200, b"")
    assert direct.headers["X-Accel-Redirect"] == "/_vimeo_s3"
    assert direct.headers["X-Vimeo-Blob"] == sha
    server = stack.bucket.server
    assert direct.headers["X-Vimeo-S3-Host"] == f"{server.host}:{server.port}"
    uri = urlsplit(direct.headers["X-Vimeo-S3-URI"])
    assert uri.path == f"/{stack.bucket.name}/{stack.bucket.blob_key(sha)}"
    assert "X-Amz-Signature=" in uri.query and "X-Amz-Expires=300" in uri.query
    # It is a real, signed GET of exactly those bytes: the store answers it...
    fetched = requests.get(server.endpoint_url + direct.headers["X-Vimeo-S3-URI"], timeout=10)
    assert (fetched.status_code, fetched.content) == (200, content)
    # ...and refuses it once tampered with.
    tampered = re.sub(r"X-Amz-Signature=[0-9a-f]", "X-Amz-Signature=0", direct.headers["X-Vimeo-S3-URI"])
    tampered = tampered if tampered != direct.headers["X-Vimeo-S3-URI"] else tampered.replace("Signature=0", "Signature=1")
    assert requests.get(server.endpoint_url + tampered, timeout=10).status_code == 403
    # That download was used: the file was decided by the app, not by the store.
    assert get(stack, "/file/" + body["filehash"]).status_code == 200
    assert_json_error(get(stack, "/file/" + body["filehash"]), 410, "Gone")


def test_the_internal_bucket_locations_are_404_from_outside(stack):
    for path in ("/_vimeo_s3", "/_vimeo_s3_whole", "/_vimeo_app_s3"):
        assert_json_error(requests.get(stack.base + path, timeout=10), 404, "Not Found")


def test_hot_public_content_comes_from_nginx_cache_and_is_counted(stack):
    content = os.urandom(4096)
    body = upload(stack, content, "hot.bin", max_downloads=0)
    path = "/file/" + body["filehash"]
    answers = [get(stack, path) for _ in range(4)]
    assert [(a.status_code, a.content) for a in answers] == [(200, content)] * 4
    for answer in answers:
        assert_only_the_apps_headers(answer)
    # The app answered the first; nginx the others, from the bucket once, then its cache.
    assert served(stack, answers[0]) == "/_vimeo_s3"
    fast = [a for a in answers[1:] if served(stack, a).startswith("/f/")]
    assert len(fast) == 3
    assert any("upstream=- " in stack.access_line(a.headers["X-Request-Id"]) for a in fast)
    assert content_cached(stack, body["sha256"])
    head = get(stack, path, method="HEAD")
    assert (head.status_code, head.content, head.headers["Content-Length"]) == (200, b"", "4096")
    # nginx logs each fast download for the counting (a HEAD is no download).
    lines = eventually(lambda: [l for l in stack.fast_downloads() if f"/{body['filehash']}/" in l] or None)
    assert lines is not None
    wait_until(lambda: len([l for l in stack.fast_downloads() if f"/{body['filehash']}/" in l]) == 3, 5,
               "nginx did not log its three fast downloads")


# -- uploads: into the bucket, nothing left of a cut-off one ---------------------------------

def start_cut_off_upload(address: str, head: bytes, sent: int) -> socket.socket:
    """A request whose body stops after ``sent`` bytes, the connection left open."""
    host, port = address.split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.sendall(head)
    chunk = os.urandom(MiB)
    for _ in range(sent // MiB):
        sock.sendall(chunk)
    return sock


@pytest.mark.parametrize("kind", ["raw", "multipart"])
def test_a_cut_off_upload_leaves_no_object_and_no_multipart_upload(stack, kind):
    """Straight to gunicorn (nginx buffers whole bodies, so only the app can be cut off
    while it streams into the bucket): once the bucket shows the upload's multipart
    upload, the client hangs up; the app aborts it."""
    length = 15 * MiB
    if kind == "raw":
        head = (f"PUT {API}/upload/cut.bin HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n"
                "Content-Type: application/octet-stream\r\n\r\n").encode()
    else:
        boundary = "cutcutcut"
        part = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"cut.bin\"\r\n"
                "Content-Type: application/octet-stream\r\n\r\n").encode()
        head = (f"PUT {API}/file HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n"
                f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n").encode() + part
    sock = start_cut_off_upload(stack.app_base.split("//")[1], head, 12 * MiB)
    try:
        wait_until(lambda: stack.bucket.multipart_uploads(), 30, "the upload never reached the bucket")
    finally:
        sock.close()
    wait_until(lambda: stack.bucket.multipart_uploads() == [] and stack.bucket.keys() == [], 30,
               f"a cut-off upload left {stack.bucket.keys()} {stack.bucket.multipart_uploads()}")
    assert stack.stored("tmp") == [] and stack.stored("blobs") == []
    assert stack.target().sql("select count(*) from files")[0][0] == 0


def test_a_raw_upload_through_nginx_streams_its_body_file_into_the_bucket(stack):
    content = os.urandom(9 * MiB + 3)  # more than one part: a multipart upload, completed
    sha = hashlib.sha256(content).hexdigest()
    answer = requests.put(stack.base + API + "/upload/big.bin", data=content, timeout=60)
    assert answer.status_code == 201, answer.text
    assert answer.json()["sha256"] == sha
    assert stack.bucket.keys() == [f"blobs/{sha[:2]}/{sha[2:4]}/{sha}"]
    assert stack.bucket.multipart_uploads() == []
    assert stack.bucket.get(sha) == content
    # nginx's body file, on the node's scratch space, is gone.
    assert eventually(lambda: not any(stack.body_dir.iterdir()))


# -- the store stopped, and back ---------------------------------------------------------------

@pytest.fixture
def outage(pg_url, tmp_path):
    """A stack of its own on an S3 server of its own, which the test stops and starts."""
    server = start_rclone(tmp_path / "s3", log_path=tmp_path / "rclone.log")
    try:
        stack = start_stack(tmp_path / "stack", pg_url, s3=server)
        try:
            yield stack, server
        finally:
            stack.stop()
            if not server.running():
                server.start()
            stack.reset()
    finally:
        server.stop()


def test_a_stopped_store_is_a_json_503_then_service_resumes_by_itself(outage):
    stack, server = outage
    private = os.urandom(20000)
    kept = upload(stack, private, "kept.bin", max_downloads=0, password="pw")
    # A public file whose grant this node holds, but whose bytes nginx has not fetched
    # yet (the app answered it directly): the fast path will go to the store.
    shared = os.urandom(30000)
    fast = upload(stack, shared, "fast.bin", max_downloads=0)
    assert get(stack, "/file/" + fast["filehash"], base=stack.app_base).status_code == 200
    files_before = stack.target().sql("select count(*) from files")[0][0]
    keys_before = stack.bucket.keys()

    server.stop()
    # Every answer within 5 s (the requests' own deadline), JSON 503 with Retry-After.
    failures = {
        "multipart upload": requests.put(stack.base + API + "/file", files={"file": ("a.bin", b"a" * 1000)}, timeout=5),
        "raw upload": requests.put(stack.base + API + "/upload/b.bin", data=b"b" * 1000, timeout=5),
        "download by the app": requests.get(stack.base + API + "/file/" + kept["filehash"],
                                            headers={"X-Password": "pw"}, timeout=5),
        "download by nginx": requests.get(stack.base + API + "/file/" + fast["filehash"], timeout=5),
    }
    for what, answer in failures.items():
        body = assert_json_error(answer, 503, "Service Unavailable")
        # 5 s, or later where the upload rate limit's window ends later (Flask-Limiter).
        assert int(once(answer, "Retry-After")) >= 5, what
        assert "storage" in body["message"] or "unavailable" in body["message"], what
    # nginx's own answer: its fast path reached for the store and failed; the app saw
    # the grant subrequest only, never the download (nginx's error page is an internal
    # URI: $uri names it).
    rid = failures["download by nginx"].headers["X-Request-Id"]
    line = stack.access_line(rid)
    assert " served=/_vimeo_error/503 " in line and " ustatus=502" in line, line
    app_lines = [entry for entry in stack.settled_app_log().splitlines() if f'"request_id": "{rid}"' in entry]
    assert app_lines and all('"route": "/_vimeo/grant/' in entry for entry in app_lines), app_lines
    # Nothing half-written was recorded.
    assert stack.target().sql("select count(*) from files")[0][0] == files_before

    server.start()  # same port, same objects; the stack is not restarted
    again = requests.get(stack.base + API + "/file/" + kept["filehash"], headers={"X-Password": "pw"}, timeout=10)
    assert (again.status_code, again.content) == (200, private)
    shared_again = requests.get(stack.base + API + "/file/" + fast["filehash"], timeout=10)
    assert (shared_again.status_code, shared_again.content) == (200, shared)
    new = upload(stack, b"after the outage", "new.txt")
    assert requests.get(new["url"].replace("http://files.test", stack.base), timeout=10).content == b"after the outage"
    assert stack.bucket.keys() == sorted(keys_before + [stack.bucket.blob_key(new["sha256"])[len(stack.bucket.prefix):]])
    ready = requests.get(stack.base + "/readyz", timeout=10)
    assert ready.status_code == 200 and ready.json()["checks"]["storage"] == "ok"
