"""The HTTP contract (SPEC 3.1–3.4, issue 2), checked on every deployment.

Each test takes ``target`` and speaks only HTTP to it (``request`` / ``upload``), then
looks behind the answers with ``sql`` and ``stored`` (files on disk, or objects in the
bucket). It never touches the app, so the same tests run on SQLite, on PostgreSQL, and
through nginx on local disk and on S3: nothing here assumes the app itself sends the
bytes.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from datetime import datetime, timedelta, timezone

import pytest
from werkzeug.http import http_date, parse_date

from support import ERROR_KEYS, SUCCESS_HEADERS
from support.uploads import upload

MiB = 1024 * 1024
PUBLIC = "http://files.test"
API_PREFIX = "/vimeo/api/v1.0"
FILE_URL = "http://files.test/vimeo/api/v1.0/file/"
GONE_REASONS = {"downloaded", "expired", "deleted"}
UPLOAD_KEYS = {
    "status", "url", "filehash", "filename", "size", "content_type", "sha256", "etag",
    "max_downloads", "expires_at", "owner_token",
}
# 1000 bytes in which every small window is distinct, so a wrong range shows.
DATA = bytes((i * 7 + i // 256) % 256 for i in range(1000))


# -- helpers ---------------------------------------------------------------------------

def uploaded(target, content: bytes = DATA, filename: str = "data.bin", **fields) -> dict:
    return upload(target, content, filename, **fields)


def unlimited(target, content: bytes = DATA, filename: str = "data.bin", **fields) -> dict:
    return uploaded(target, content, filename, max_downloads=0, **fields)


def path(body: dict) -> str:
    return "/file/" + body["filehash"]


def row(target, filehash: str):
    rows = target.sql(
        "select downloads, max_downloads, status, gone_reason, sha256, password_hash, expires_at"
        " from files where filehash = :h",
        h=filehash,
    )
    assert len(rows) == 1
    return rows[0]


def downloads(target, body: dict) -> int:
    return row(target, body["filehash"]).downloads


def files_under(directory: str) -> list[str]:
    found = []
    for dirpath, _dirs, names in os.walk(directory):
        found.extend(os.path.join(dirpath, n) for n in names)
    return found


def assert_error(target, answer, status: int, phrase: str, reason: str | None = None) -> dict:
    """SPEC 3.4: JSON with exactly error/message/request_id, the exact phrase, no internals;
    a 410 also names why (issue 16): ``reason``, one of GONE_REASONS (``reason`` if given)."""
    assert answer.status == status, answer
    assert answer.headers["Content-Type"].split(";")[0] == "application/json"
    body = answer.json()
    if status == 410:
        assert set(body) == ERROR_KEYS | {"reason"}
        assert body["reason"] in GONE_REASONS
        assert reason is None or body["reason"] == reason, body
    else:
        assert set(body) == ERROR_KEYS
    assert body["error"] == phrase
    assert isinstance(body["message"], str) and body["message"]
    assert isinstance(body["request_id"], str) and body["request_id"]
    text = answer.body.decode("utf-8")
    assert "Traceback" not in text
    assert target.storage_dir not in text
    assert not re.search(r"/\w+/[\w/.-]+\.py", text), text
    return body


def basic(username: str, password: str) -> dict:
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def iso(value: str) -> datetime:
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)


def now() -> datetime:
    return datetime.now(timezone.utc)


def parse_byteranges(answer) -> list[tuple[dict, bytes]]:
    """Split a multipart/byteranges body (RFC 9110 §14.6) into (part headers, bytes)."""
    media, _, params = answer.headers["Content-Type"].partition(";")
    assert media.strip() == "multipart/byteranges"
    match = re.search(r'boundary="?([^";]+)"?', params)
    assert match, answer.headers["Content-Type"]
    delimiter = b"--" + match[1].encode("ascii")
    chunks = answer.body.split(delimiter)
    assert chunks[0].strip(b"\r\n") == b""  # nothing but an optional CRLF before the first
    assert chunks[-1] == b"--\r\n"  # the close delimiter ends the body
    parts = []
    for chunk in chunks[1:-1]:
        assert chunk.startswith(b"\r\n") and chunk.endswith(b"\r\n")
        head, sep, data = chunk[2:-2].partition(b"\r\n\r\n")
        assert sep
        headers = {}
        for line in head.decode("ascii").split("\r\n"):
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        parts.append((headers, data))
    return parts


# -- upload (SPEC 3.1) -----------------------------------------------------------------

def test_upload_answers_201_with_the_contract_body(target):
    before = now().replace(microsecond=0)
    answer = upload(target, b"quarterly numbers\n", "report.xls", expect=None)
    after = now()

    assert answer.status == 201
    assert answer.headers["Content-Type"].split(";")[0] == "application/json"
    body = answer.json()
    assert UPLOAD_KEYS <= set(body)
    assert body["status"] == "File Uploaded Successfully"
    assert re.fullmatch(r"[0-9a-f]{32}", body["filehash"])
    assert body["url"] == FILE_URL + body["filehash"]
    assert answer.headers["Location"] == body["url"]
    assert body["filename"] == "report.xls"
    assert body["size"] == 18 and isinstance(body["size"], int)
    assert body["content_type"] == "application/vnd.ms-excel"
    assert body["sha256"] == hashlib.sha256(b"quarterly numbers\n").hexdigest()
    assert body["etag"] == '"' + body["sha256"] + '"'
    assert body["max_downloads"] == 1 and isinstance(body["max_downloads"], int)
    # The default expiry is a week (DEFAULT_EXPIRES_IN).
    week = timedelta(days=7)
    assert before + week <= iso(body["expires_at"]) <= after + week
    assert isinstance(body["owner_token"], str) and len(body["owner_token"]) >= 32
    # Secrets are stored hashed, never as sent.
    stored = target.sql("select owner_token_hash from files where filehash = :h", h=body["filehash"])
    assert stored[0][0] != body["owner_token"]
    assert body["owner_token"] not in stored[0][0]


def test_filehashes_are_fresh_for_every_upload(target):
    hashes = {uploaded(target, b"same bytes")["filehash"] for _ in range(3)}
    assert len(hashes) == 3


def test_download_gives_the_bytes_once_then_gone(target):
    body = uploaded(target, b"one time only\n", "note.txt")

    first = target.request("GET", body["url"])
    assert first.status == 200
    assert first.body == b"one time only\n"

    again = target.request("GET", body["url"])
    assert_error(target, again, 410, "Gone")
    record = row(target, body["filehash"])
    assert (record.downloads, record.status, record.gone_reason) == (1, "gone", "downloaded")


def test_three_downloads_then_gone(target):
    body = uploaded(target, b"three times", max_downloads=3)
    assert body["max_downloads"] == 3
    for _ in range(3):
        answer = target.request("GET", path(body))
        assert answer.status == 200
        assert answer.body == b"three times"
    assert_error(target, target.request("GET", path(body)), 410, "Gone")
    assert downloads(target, body) == 3


def test_zero_max_downloads_means_unlimited(target):
    body = unlimited(target, b"again and again")
    assert body["max_downloads"] == 0
    for _ in range(5):
        assert target.request("GET", path(body)).body == b"again and again"
    record = row(target, body["filehash"])
    # Through nginx, the app answers the first download and grants the rest to nginx's
    # fast path, which counts nothing in the row (README "Fast path").
    assert (record.downloads, record.status) == (1 if target.name.startswith("stack") else 5, "available")


def test_first_file_part_is_taken_when_none_is_named_file(target):
    answer = target.request("PUT", "/file", files={"document": ("doc.txt", b"named otherwise")})
    assert answer.status == 201, answer
    assert answer.json()["filename"] == "doc.txt"
    assert target.request("GET", answer.json()["url"]).body == b"named otherwise"


def test_upload_without_a_file_is_400(target):
    assert_error(target, target.request("PUT", "/file", data={"password": "x"}), 400, "Bad Request")
    assert_error(target, target.request("PUT", "/file"), 400, "Bad Request")
    assert_error(target, target.request("PUT", "/file", files={"file": ("", b"")}), 400, "Bad Request")
    assert target.sql("select count(*) from files")[0][0] == 0


@pytest.mark.parametrize("value", ["-1", "abc", "1.5", "1e3", "10000000000"])
def test_bad_max_downloads_is_400(target, value):
    body = assert_error(target, upload(target, b"x", max_downloads=value, expect=None), 400, "Bad Request")
    assert "max_downloads" in body["message"]
    assert target.sql("select count(*) from files")[0][0] == 0


def test_client_filename_never_reaches_the_disk(target):
    body = uploaded(target, b"escape attempt", "../../etc/evil.txt")
    assert body["filename"] == "evil.txt"
    assert target.stored() == [os.path.join("blobs", body["sha256"][:2], body["sha256"][2:4], body["sha256"])]
    assert target.stored("tmp") == []


def test_identical_uploads_share_one_stored_copy(target):
    first = uploaded(target, b"dedup me")
    second = uploaded(target, b"dedup me")
    other = uploaded(target, b"something else")
    assert first["sha256"] == second["sha256"] != other["sha256"]
    assert len(target.stored("blobs")) == 2
    assert target.sql("select refcount from blobs where sha256 = :s", s=first["sha256"])[0][0] == 2
    # Both URLs serve the shared bytes.
    assert target.request("GET", path(first)).body == b"dedup me"
    assert target.request("GET", path(second)).body == b"dedup me"


@pytest.mark.parametrize("how", ["multipart", "raw"])
def test_upload_over_the_limit_is_413_and_leaves_nothing(target, how):
    content = b"\0" * (17 * MiB)
    if how == "multipart":
        answer = upload(target, content, "big.bin", expect=None)
    else:
        answer = target.request("PUT", "/upload/big.bin", data=content)
    assert_error(target, answer, 413, "Request Entity Too Large")
    assert target.sql("select count(*) from files")[0][0] == 0
    assert target.sql("select count(*) from blobs")[0][0] == 0
    assert target.stored("blobs") == []
    assert target.stored("tmp") == []


@pytest.mark.parametrize("how", ["multipart", "raw"])
def test_a_file_of_exactly_the_limit_uploads_and_one_byte_more_does_not(target, how):
    """The limit is the file's size, whatever framing carries it: a multipart body is
    larger than its file (boundaries, part headers, fields), and nginx's
    client_max_body_size counted that too (issue 13)."""
    limit = 16 * MiB
    for size, status in ((limit, 201), (limit + 1, 413)):
        content = b"\1" * size
        if how == "multipart":
            answer = upload(target, content, "edge.bin", expect=None, max_downloads=0)
        else:
            answer = target.request("PUT", "/upload/edge.bin", data=content, headers={"X-Max-Downloads": "0"})
        assert answer.status == status, answer
        if status == 201:
            assert answer.json()["size"] == limit
            assert answer.json()["sha256"] == hashlib.sha256(content).hexdigest()
        else:
            assert_error(target, answer, 413, "Request Entity Too Large")
    assert target.sql("select count(*) from files")[0][0] == 1
    assert files_under(os.path.join(target.storage_dir, "tmp")) == []


# -- raw upload ------------------------------------------------------------------------

def test_raw_upload_with_options_in_headers(target):
    before = now().replace(microsecond=0)
    answer = target.request(
        "PUT",
        "/upload/name.txt",
        data=b"raw body\n",
        headers={"X-Password": "s3cret", "X-Max-Downloads": "2", "X-Expires-In": "1h"},
    )
    assert answer.status == 201, answer
    body = answer.json()
    assert answer.headers["Location"] == body["url"] == FILE_URL + body["filehash"]
    assert body["filename"] == "name.txt"
    assert body["content_type"] == "text/plain"
    assert body["size"] == 9
    assert body["sha256"] == hashlib.sha256(b"raw body\n").hexdigest()
    assert body["max_downloads"] == 2
    assert before + timedelta(hours=1) <= iso(body["expires_at"]) <= now() + timedelta(hours=1)

    assert target.request("GET", path(body)).status == 401
    ok = target.request("GET", path(body), headers={"X-Password": "s3cret"})
    assert (ok.status, ok.body) == (200, b"raw body\n")


def test_form_upload_takes_the_option_headers_too(target):
    """curl -F file=@x -H 'X-Password: ...' means the password: a file stored without it
    would be public to whoever gets the link."""
    before = now().replace(microsecond=0)
    answer = target.request(
        "PUT", "/file", files={"file": ("form.txt", b"form body\n")},
        headers={"X-Password": "s3cret", "X-Max-Downloads": "2", "X-Expires-In": "1h"},
    )
    assert answer.status == 201, answer
    body = answer.json()
    assert body["max_downloads"] == 2
    assert before + timedelta(hours=1) <= iso(body["expires_at"]) <= now() + timedelta(hours=1)
    assert row(target, body["filehash"]).password_hash is not None
    assert target.request("GET", path(body)).status == 401
    ok = target.request("GET", path(body), headers={"X-Password": "s3cret"})
    assert (ok.status, ok.body) == (200, b"form body\n")


def test_form_upload_option_as_field_and_header(target):
    """The same value twice is one option; two values are a 400 that names it and keeps
    nothing; an empty header or field counts as not given."""
    same = target.request("PUT", "/file", data={"password": "pw", "max_downloads": "3"},
                          files={"file": ("a.txt", b"a")}, headers={"X-Password": "pw", "X-Max-Downloads": "3"})
    assert same.status == 201, same
    assert same.json()["max_downloads"] == 3
    assert target.request("GET", path(same.json())).status == 401
    empty = target.request("PUT", "/file", data={"password": "pw", "max_downloads": ""},
                           files={"file": ("b.txt", b"b")}, headers={"X-Password": "", "X-Max-Downloads": "0"})
    assert empty.status == 201, empty
    assert empty.json()["max_downloads"] == 0
    assert target.request("GET", path(empty.json())).status == 401
    files_before = target.sql("select count(*) from files")[0][0]
    for field, header, value, other in [("password", "X-Password", "pw", "other"),
                                        ("max_downloads", "X-Max-Downloads", "1", "0"),
                                        ("expires_in", "X-Expires-In", "1h", "2h")]:
        answer = target.request("PUT", "/file", data={field: value}, files={"file": ("c.txt", b"c")},
                                headers={header: other})
        message = assert_error(target, answer, 400, "Bad Request")["message"]
        assert field in message and header in message, message
        if field == "password":
            assert value not in message and other not in message, message
    assert target.sql("select count(*) from files")[0][0] == files_before
    assert target.stored("tmp") == []


@pytest.mark.parametrize("route", ["/upload/", "/upload"])
def test_raw_upload_without_a_name(target, route):
    answer = target.request("PUT", route, data=b"nameless", headers={"X-Max-Downloads": "0"})
    assert answer.status == 201, answer
    body = answer.json()
    assert body["filename"] == "upload"
    assert body["content_type"] == "application/octet-stream"
    assert body["max_downloads"] == 0
    assert target.request("GET", body["url"]).body == b"nameless"


@pytest.mark.parametrize("route", ["/upload/", "/upload/form.txt"])
def test_a_form_sent_to_the_raw_upload_is_415_and_stores_nothing(target, route):
    """curl -F file=@x -X PUT .../upload/ would otherwise store the form's envelope as
    the file; the answer points to PUT /file."""
    answer = target.request("PUT", route, files={"file": ("form.txt", b"form body")},
                            headers={"X-Max-Downloads": "0"})
    message = assert_error(target, answer, 415, "Unsupported Media Type")["message"]
    assert "PUT /file" in message, message
    assert target.sql("select count(*) from files")[0][0] == 0
    assert target.stored("tmp") == [] and target.stored("blobs") == []
    # A raw body that happens to look like a form is not refused by its bytes.
    raw = target.request("PUT", route, data=b"--x\r\nContent-Disposition: form-data\r\n\r\n--x--\r\n",
                         headers={"X-Max-Downloads": "0"})
    assert raw.status == 201, raw


def test_raw_upload_bad_header_option_is_400(target):
    answer = target.request("PUT", "/upload/x.txt", data=b"x", headers={"X-Expires-In": "soon"})
    assert "expires_in" in assert_error(target, answer, 400, "Bad Request")["message"]
    answer = target.request("PUT", "/upload/x.txt", data=b"x", headers={"X-Max-Downloads": "-3"})
    assert "max_downloads" in assert_error(target, answer, 400, "Bad Request")["message"]
    assert target.sql("select count(*) from files")[0][0] == 0
    assert target.stored("tmp") == []


@pytest.mark.parametrize(
    "declared, filename, expected",
    [
        ("image/png", "picture.txt", "image/png"),  # a specific type wins over the name
        ("application/pdf; charset=binary", "x.bin", "application/pdf"),
        ("application/octet-stream", "notes.txt", "text/plain"),  # unspecific: the name
        (None, "data.json", "application/json"),
        (None, "no-extension", "application/octet-stream"),
    ],
)
def test_content_type_from_the_declared_type_else_the_filename(target, declared, filename, expected):
    multipart = upload(target, b"typed", filename, content_type=declared, max_downloads=0, expect=None)
    headers = {"Content-Type": declared} if declared else {}
    raw = target.request("PUT", "/upload/" + filename, data=b"typed", headers={**headers, "X-Max-Downloads": "0"})
    for answer in (multipart, raw):
        assert answer.status == 201, answer
        assert answer.json()["content_type"] == expected
        assert target.request("GET", answer.json()["url"]).headers["Content-Type"] == expected


# -- passwords -------------------------------------------------------------------------

def test_password_missing_or_wrong_is_401(target):
    body = uploaded(target, b"secret", password="open sesame")
    for headers, query in [
        ({}, ""),
        ({"X-Password": "wrong"}, ""),
        ({}, "?password=wrong"),
        (basic("user", "wrong"), ""),
        ({"X-Password": ""}, ""),
    ]:
        answer = target.request("GET", path(body) + query, headers=headers)
        assert_error(target, answer, 401, "Unauthorized")
        assert answer.headers["WWW-Authenticate"].startswith("Basic ")
        assert 'realm="' in answer.headers["WWW-Authenticate"]
    # Refused attempts use no download.
    assert downloads(target, body) == 0
    assert target.request("GET", path(body), headers={"X-Password": "open sesame"}).body == b"secret"


@pytest.mark.parametrize(
    "headers, query",
    [
        ({}, "?password=open%20sesame"),
        ({"X-Password": "open sesame"}, ""),
        (basic("anyone", "open sesame"), ""),
        (basic("", "open sesame"), ""),
    ],
    ids=["query", "x-password", "basic", "basic-no-user"],
)
def test_the_right_password_by_each_way(target, headers, query):
    body = uploaded(target, b"for friends", password="open sesame")
    answer = target.request("GET", path(body) + query, headers=headers)
    assert answer.status == 200
    assert answer.body == b"for friends"
    assert downloads(target, body) == 1


def test_gone_comes_before_the_password_check(target):
    body = uploaded(target, b"once", password="pw")
    assert target.request("GET", path(body), headers={"X-Password": "pw"}).status == 200
    assert_error(target, target.request("GET", path(body)), 410, "Gone")


def test_password_file_cache_class(target):
    body = unlimited(target, b"x", password="pw")
    answer = target.request("GET", path(body), headers={"X-Password": "pw"})
    assert answer.headers["Cache-Control"] == "private, no-cache"


# -- not found, methods, routes --------------------------------------------------------

@pytest.mark.parametrize(
    "filehash",
    ["0" * 32, "a" * 32, "not-a-hash", "A" * 32, "0" * 31, "0" * 33, "g" * 32],
)
def test_unknown_hash_is_404(target, filehash):
    assert_error(target, target.request("GET", "/file/" + filehash), 404, "Not Found")


def test_uppercase_form_of_a_real_hash_is_404(target):
    body = unlimited(target)
    assert_error(target, target.request("GET", "/file/" + body["filehash"].upper()), 404, "Not Found")


def test_post_file_is_405_with_allow(target):
    answer = target.request("POST", "/file")
    assert_error(target, answer, 405, "Method not Allowed")
    allowed = {m.strip() for m in answer.headers["Allow"].split(",")}
    assert "PUT" in allowed and "POST" not in allowed


def test_unsupported_method_on_a_file_is_405_with_allow(target):
    body = unlimited(target)
    answer = target.request("PROPFIND", path(body))
    assert_error(target, answer, 405, "Method not Allowed")
    allowed = {m.strip() for m in answer.headers["Allow"].split(",")}
    # POST: the landing page's Download button (issue 16).
    assert {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"} <= allowed
    assert "PROPFIND" not in allowed


@pytest.mark.parametrize("route", ["/vimeo/api/v1.0/nothing-here", "/nothing-here", "/vimeo/api/v2.0/file"])
def test_unknown_route_is_404_json(target, route):
    assert_error(target, target.request("GET", route), 404, "Not Found")


# -- what every success carries (SPEC 3.2) ---------------------------------------------

def test_success_headers(target):
    content = b"header check\n"
    before = now().replace(microsecond=0)
    body = uploaded(target, content, "check.txt")
    answer = target.request("GET", path(body))

    assert answer.status == 200
    for name in SUCCESS_HEADERS:
        assert name in answer.headers, name
    assert answer.headers["Content-Type"] == "text/plain"
    assert answer.headers["Content-Length"] == str(len(content))
    assert answer.headers["ETag"] == '"' + hashlib.sha256(content).hexdigest() + '"'
    assert answer.headers["ETag"] == body["etag"]
    last_modified = parse_date(answer.headers["Last-Modified"])
    assert before <= last_modified <= now()
    assert answer.headers["Accept-Ranges"] == "bytes"
    assert answer.headers["X-Content-Type-Options"] == "nosniff"
    assert answer.headers["Content-Disposition"] == "inline; filename=\"check.txt\"; filename*=UTF-8''check.txt"
    assert answer.headers["Cache-Control"] == "private, no-store"


def test_content_disposition_carries_a_utf8_name(target):
    body = unlimited(target, b"cv", "résumé.txt")
    disposition = target.request("GET", path(body)).headers["Content-Disposition"]
    assert disposition.startswith("inline; ")
    assert "filename*=UTF-8''r%C3%A9sum%C3%A9.txt" in disposition


@pytest.mark.parametrize(
    "content, filename, content_type",
    [
        (b"<html><script>alert(1)</script></html>", "page.html", "text/html"),
        (b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>', "logo.svg", "image/svg+xml"),
        (b"<?xml version='1.0'?><a/>", "data.xml", None),
    ],
)
def test_active_content_is_an_attachment(target, content, filename, content_type):
    body = unlimited(target, content, filename, **({"content_type": content_type} if content_type else {}))
    answer = target.request("GET", path(body))
    assert answer.status == 200
    assert answer.headers["Content-Disposition"].startswith("attachment; ")
    assert f"filename*=UTF-8''{filename}" in answer.headers["Content-Disposition"]
    assert answer.headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize("headers", [{}, {"Range": "bytes=0-3"}, {"Range": "bytes=0-1,4-5"}, {"Range": "bytes=x"}],
                         ids=["whole", "range", "ranges", "ignored-range"])
def test_an_inline_pdf_is_a_sandboxed_document(target, headers):
    """A browser's PDF viewer runs the document's scripts: every download carries a
    sandboxing Content-Security-Policy, whoever sends the bytes (issue 13)."""
    pdf = b"%PDF-1.4\n1 0 obj << /OpenAction << /S /JavaScript /JS (app.alert(1)) >> >>\n%%EOF\n"
    body = unlimited(target, pdf, "report.pdf")
    for _ in range(2):  # the second may come from nginx's fast path
        answer = target.request("GET", path(body), headers=headers)
        assert answer.status in (200, 206), answer
        assert answer.headers["Content-Disposition"].startswith("inline; ")
        assert answer.headers["Content-Security-Policy"] == "sandbox"
    version = target.request("POST", path(body) + "/versions", headers={"X-Owner-Token": body["owner_token"]}).json()
    answer = target.request("GET", "/v/" + version["version_id"], headers=headers)
    assert answer.headers["Content-Security-Policy"] == "sandbox"


@pytest.mark.parametrize("host", ["evil.test", "files.test:1"])
def test_a_redirect_points_at_the_public_url_whatever_the_host(target, host):
    """werkzeug answers 308 to a path with "//" and built its Location from the Host the
    client sent (issue 13): a forged Host sent clients elsewhere."""
    body = unlimited(target)
    for sent, location in (
        (f"{API_PREFIX}//file/{body['filehash']}", f"{API_PREFIX}/file/{body['filehash']}"),
        (f"{API_PREFIX}//openapi.json?x=1", f"{API_PREFIX}/openapi.json?x=1"),
    ):
        answer = target.request("GET", sent, headers={"Host": host})
        assert answer.status == 308, answer
        assert answer.headers["Location"] == PUBLIC + location
        assert answer.body == b""


@pytest.mark.parametrize(
    "fields, password, expected",
    [
        ({"max_downloads": 1}, None, "private, no-store"),
        ({"max_downloads": 5, "password": "pw"}, "pw", "private, no-store"),
        ({"max_downloads": 0, "password": "pw"}, "pw", "private, no-cache"),
        ({"max_downloads": 0}, None, "public, max-age=60, s-maxage=3600"),
    ],
    ids=["limited", "limited-password", "password-unlimited", "public"],
)
def test_cache_class(target, fields, password, expected):
    body = uploaded(target, b"cache me", **fields)
    headers = {"X-Password": password} if password else {}
    assert target.request("HEAD", path(body), headers=headers).headers["Cache-Control"] == expected
    assert target.request("GET", path(body), headers=headers).headers["Cache-Control"] == expected


# -- HEAD ------------------------------------------------------------------------------

def test_head_has_the_headers_of_get_and_no_body(target):
    body = unlimited(target, DATA, "data.bin")
    head = target.request("HEAD", path(body))
    assert head.status == 200
    assert head.body == b""
    assert downloads(target, body) == 0
    get = target.request("GET", path(body))
    assert get.body == DATA
    for name in SUCCESS_HEADERS:
        assert head.headers[name] == get.headers[name], name
    assert head.headers["Content-Length"] == str(len(DATA))


def test_head_uses_no_download(target):
    body = uploaded(target, b"look, don't take")
    for _ in range(3):
        assert target.request("HEAD", path(body)).status == 200
    assert downloads(target, body) == 0
    assert target.request("GET", path(body)).body == b"look, don't take"
    assert target.request("HEAD", path(body)).status == 410


# -- conditional requests on an unlimited file (SPEC 3.2 step 4) -----------------------

def assert_not_modified(target, answer, body):
    assert answer.status == 304, answer
    assert answer.body == b""
    assert answer.headers["ETag"] == body["etag"]
    assert downloads(target, body) == 0


@pytest.mark.parametrize("form", ["exact", "star", "weak", "list"])
def test_if_none_match_gives_304(target, form):
    body = unlimited(target)
    value = {
        "exact": body["etag"],
        "star": "*",
        "weak": "W/" + body["etag"],
        "list": '"other", ' + body["etag"],
    }[form]
    answer = target.request("GET", path(body), headers={"If-None-Match": value})
    assert_not_modified(target, answer, body)
    assert answer.headers["Cache-Control"] == "public, max-age=60, s-maxage=3600"


def test_if_none_match_other_tag_gives_the_file(target):
    body = unlimited(target)
    answer = target.request("GET", path(body), headers={"If-None-Match": '"something-else"'})
    assert (answer.status, answer.body) == (200, DATA)
    assert downloads(target, body) == 1


def test_if_modified_since_gives_304(target):
    body = unlimited(target)
    last_modified = target.request("HEAD", path(body)).headers["Last-Modified"]
    later = http_date(parse_date(last_modified) + timedelta(days=1))
    for value in (last_modified, later):
        answer = target.request("GET", path(body), headers={"If-Modified-Since": value})
        assert_not_modified(target, answer, body)


def test_if_modified_since_earlier_gives_the_file(target):
    body = unlimited(target)
    last_modified = target.request("HEAD", path(body)).headers["Last-Modified"]
    earlier = http_date(parse_date(last_modified) - timedelta(seconds=1))
    answer = target.request("GET", path(body), headers={"If-Modified-Since": earlier})
    assert (answer.status, answer.body) == (200, DATA)


def test_if_none_match_overrides_if_modified_since(target):
    body = unlimited(target)
    last_modified = target.request("HEAD", path(body)).headers["Last-Modified"]
    answer = target.request(
        "GET", path(body), headers={"If-None-Match": '"other"', "If-Modified-Since": last_modified}
    )
    assert answer.status == 200


def test_if_match_mismatch_is_412(target):
    body = unlimited(target)
    answer = target.request("GET", path(body), headers={"If-Match": '"not-the-etag"'})
    assert_error(target, answer, 412, "Precondition Failed")
    weak = target.request("GET", path(body), headers={"If-Match": "W/" + body["etag"]})
    assert_error(target, weak, 412, "Precondition Failed")  # If-Match compares strongly
    assert downloads(target, body) == 0


@pytest.mark.parametrize("value", ["*", "current", "list"])
def test_if_match_that_holds_gives_the_file(target, value):
    body = unlimited(target)
    header = {"*": "*", "current": body["etag"], "list": '"other", ' + body["etag"]}[value]
    answer = target.request("GET", path(body), headers={"If-Match": header})
    assert (answer.status, answer.body) == (200, DATA)
    assert answer.headers["ETag"] == body["etag"]
    assert downloads(target, body) == 1


def test_if_unmodified_since_before_last_modified_is_412(target):
    body = unlimited(target)
    last_modified = target.request("HEAD", path(body)).headers["Last-Modified"]
    earlier = http_date(parse_date(last_modified) - timedelta(seconds=1))
    answer = target.request("GET", path(body), headers={"If-Unmodified-Since": earlier})
    assert_error(target, answer, 412, "Precondition Failed")
    assert downloads(target, body) == 0
    same = target.request("GET", path(body), headers={"If-Unmodified-Since": last_modified})
    assert (same.status, same.body) == (200, DATA)


def test_preconditions_are_checked_after_the_password(target):
    body = unlimited(target, password="pw")
    answer = target.request("GET", path(body), headers={"If-None-Match": "*"})
    assert_error(target, answer, 401, "Unauthorized")
    answer = target.request("GET", path(body), headers={"If-None-Match": "*", "X-Password": "pw"})
    assert_not_modified(target, answer, body)


# -- ranges (SPEC 3.2 step 5) ----------------------------------------------------------

def test_single_range_is_206(target):
    body = unlimited(target)
    answer = target.request("GET", path(body), headers={"Range": "bytes=0-9"})
    assert answer.status == 206
    assert answer.body == DATA[:10]
    assert answer.headers["Content-Range"] == f"bytes 0-9/{len(DATA)}"
    assert answer.headers["Content-Length"] == "10"
    assert answer.headers["ETag"] == body["etag"]
    assert downloads(target, body) == 1  # a 206 uses a download


@pytest.mark.parametrize(
    "spec, start, stop",
    [("bytes=-5", 995, 1000), ("bytes=990-", 990, 1000), ("bytes=100-199", 100, 200), ("bytes=995-5000", 995, 1000)],
)
def test_suffix_and_open_ranges(target, spec, start, stop):
    body = unlimited(target)
    answer = target.request("GET", path(body), headers={"Range": spec})
    assert answer.status == 206
    assert answer.body == DATA[start:stop]
    assert answer.headers["Content-Range"] == f"bytes {start}-{stop - 1}/{len(DATA)}"
    assert answer.headers["Content-Length"] == str(stop - start)


def test_two_ranges_are_multipart_byteranges(target):
    body = unlimited(target, DATA, "data.txt")
    answer = target.request("GET", path(body), headers={"Range": "bytes=0-9,500-519"})
    assert answer.status == 206
    assert answer.headers["Content-Length"] == str(len(answer.body))
    assert "Content-Range" not in answer.headers
    parts = parse_byteranges(answer)
    assert [data for _, data in parts] == [DATA[0:10], DATA[500:520]]
    assert [h["content-range"] for h, _ in parts] == [f"bytes 0-9/{len(DATA)}", f"bytes 500-519/{len(DATA)}"]
    assert all(h["content-type"] == "text/plain" for h, _ in parts)
    assert downloads(target, body) == 1


def test_unsatisfiable_range_is_416(target):
    body = unlimited(target)
    answer = target.request("GET", path(body), headers={"Range": "bytes=5000-6000"})
    assert_error(target, answer, 416, "Range Not Satisfiable")
    assert answer.headers["Content-Range"] == f"bytes */{len(DATA)}"
    assert downloads(target, body) == 0


# Only other units and a missing "=": for a malformed bytes range (bytes=abc, bytes=9-0)
# RFC 9110 lets a server ignore it (the app) or answer 416 (nginx), so the deployments differ.
@pytest.mark.parametrize("value", ["items=0-5", "bytes 0-5", "pages=1-2"])
def test_malformed_range_is_ignored(target, value):
    body = unlimited(target)
    answer = target.request("GET", path(body), headers={"Range": value})
    assert (answer.status, answer.body) == (200, DATA)
    assert "Content-Range" not in answer.headers


def test_if_range(target):
    body = unlimited(target)
    last_modified = target.request("HEAD", path(body)).headers["Last-Modified"]
    stale = target.request("GET", path(body), headers={"Range": "bytes=0-9", "If-Range": '"stale"'})
    assert (stale.status, stale.body) == (200, DATA)
    current = target.request("GET", path(body), headers={"Range": "bytes=0-9", "If-Range": body["etag"]})
    assert (current.status, current.body) == (206, DATA[:10])
    by_date = target.request("GET", path(body), headers={"Range": "bytes=10-19", "If-Range": last_modified})
    assert (by_date.status, by_date.body) == (206, DATA[10:20])


def test_range_on_a_one_download_file_uses_it_up(target):
    body = uploaded(target)
    answer = target.request("GET", path(body), headers={"Range": "bytes=0-9"})
    assert (answer.status, answer.body) == (206, DATA[:10])
    # The same client may fetch the rest within the resume window (issue 16), and only the
    # rest: a plain GET, or a range from the first byte, is a new download.
    rest = target.request("GET", path(body), headers={"Range": "bytes=10-"})
    assert (rest.status, rest.body) == (206, DATA[10:])
    assert row(target, body["filehash"]).downloads == 1
    assert_error(target, target.request("GET", path(body)), 410, "Gone", "downloaded")
    assert_error(target, target.request("GET", path(body), headers={"Range": "bytes=0-9"}), 410, "Gone", "downloaded")


# -- expiry ----------------------------------------------------------------------------

@pytest.mark.parametrize(
    "value, seconds",
    [("90", 90), ("90s", 90), ("2m", 120), ("1h", 3600), ("1d", 86400), (" 3H ", 3 * 3600)],
)
def test_expires_in_grammar(target, value, seconds):
    before = now().replace(microsecond=0)
    body = uploaded(target, expires_in=value)
    after = now()
    expires_at = iso(body["expires_at"])
    assert before + timedelta(seconds=seconds) <= expires_at <= after + timedelta(seconds=seconds)


def test_expires_in_never_is_refused_under_the_default_cap(target):
    """Anyone may upload: by default nothing stays past MAX_EXPIRES_IN (30 days), and
    ``never`` is refused (tests/test_quotas.py lifts the cap)."""
    answer = upload(target, b"x", expect=None, expires_in="never")
    body = assert_error(target, answer, 400, "Bad Request")
    assert "never" in body["message"] and "2592000" in body["message"]
    assert target.sql("select count(*) from files")[0][0] == 0
    assert_error(target, upload(target, b"x", expect=None, expires_in="31d"), 400, "Bad Request")
    assert uploaded(target, expires_in="30d")["expires_at"] is not None


@pytest.mark.parametrize("value", ["abc", "-5", "0", "0s", "1w", "1.5h", "h", "10 m", "99999999999999d"])
def test_bad_expires_in_is_400(target, value):
    answer = upload(target, b"x", expires_in=value, expect=None)
    body = assert_error(target, answer, 400, "Bad Request")
    assert "expires_in" in body["message"]
    assert target.sql("select count(*) from files")[0][0] == 0
    assert target.stored("tmp") == []


def test_expired_file_is_gone_at_once(target):
    body = uploaded(target, b"short-lived", expires_in=1, max_downloads=0)
    moved = target.sql("update files set expires_at = '2000-01-01 00:00:00' where filehash = :h", h=body["filehash"])
    assert moved == 1
    assert_error(target, target.request("GET", path(body)), 410, "Gone")
    assert target.request("HEAD", path(body)).status == 410
    assert_error(target, target.request("GET", path(body), headers={"If-None-Match": "*"}), 410, "Gone")
    assert downloads(target, body) == 0


# -- owner management (SPEC 3.3) -------------------------------------------------------

def owner(body: dict, **headers) -> dict:
    return {"X-Owner-Token": body["owner_token"], **headers}


def test_delete_needs_the_owner_token(target):
    body = uploaded(target)
    assert_error(target, target.request("DELETE", path(body)), 401, "Unauthorized")
    wrong = target.request("DELETE", path(body), headers={"X-Owner-Token": "not-the-token"})
    assert_error(target, wrong, 403, "Forbidden")
    other = uploaded(target, b"another file")
    assert_error(target, target.request("DELETE", path(body), headers=owner(other)), 403, "Forbidden")
    assert row(target, body["filehash"]).status == "available"

    answer = target.request("DELETE", path(body), headers=owner(body))
    assert answer.status == 202
    assert answer.json() == {"status": "File Deletion Scheduled"}
    assert_error(target, target.request("GET", path(body)), 410, "Gone")
    record = row(target, body["filehash"])
    assert (record.status, record.gone_reason, record.downloads) == ("gone", "deleted", 0)
    # Deleting twice: the file is already gone.
    assert_error(target, target.request("DELETE", path(body), headers=owner(body)), 410, "Gone")


def test_delete_unknown_is_404(target):
    answer = target.request("DELETE", "/file/" + "0" * 32, headers={"X-Owner-Token": "x"})
    assert_error(target, answer, 404, "Not Found")


@pytest.mark.parametrize("how", ["multipart", "raw"])
def test_replace_content(target, how):
    body = unlimited(target, b"version one", "doc.txt")
    old_modified = parse_date(target.request("HEAD", path(body)).headers["Last-Modified"])
    if how == "multipart":
        answer = target.request("PUT", path(body), headers=owner(body), files={"file": ("doc.txt", b"version two!")})
    else:
        answer = target.request("PUT", path(body), headers=owner(body), data=b"version two!")
    assert answer.status == 200, answer
    new_sha = hashlib.sha256(b"version two!").hexdigest()
    assert answer.json()["sha256"] == new_sha
    assert answer.json()["etag"] == f'"{new_sha}"'
    assert answer.json()["size"] == 12
    assert answer.json()["url"] == body["url"]

    get = target.request("GET", path(body))
    assert get.body == b"version two!"
    assert get.headers["ETag"] == f'"{new_sha}"'
    assert get.headers["Content-Length"] == "12"
    assert get.headers["Content-Type"] == "text/plain"
    assert parse_date(get.headers["Last-Modified"]) > old_modified
    # The old validator no longer matches.
    assert target.request("GET", path(body), headers={"If-None-Match": body["etag"]}).status == 200
    assert row(target, body["filehash"]).sha256 == new_sha


def test_replace_with_a_stale_if_match_is_412(target):
    body = unlimited(target, b"original")
    first = target.request("PUT", path(body), headers=owner(body, **{"If-Match": body["etag"]}), data=b"second")
    assert first.status == 200
    stale = target.request("PUT", path(body), headers=owner(body, **{"If-Match": body["etag"]}), data=b"third")
    assert_error(target, stale, 412, "Precondition Failed")
    assert target.request("GET", path(body)).body == b"second"
    assert row(target, body["filehash"]).sha256 == hashlib.sha256(b"second").hexdigest()


def test_replace_with_a_stale_if_unmodified_since_is_412(target):
    body = unlimited(target, b"original")
    last_modified = parse_date(target.request("HEAD", path(body)).headers["Last-Modified"])
    earlier = http_date(last_modified - timedelta(seconds=1))
    answer = target.request("PUT", path(body), headers=owner(body, **{"If-Unmodified-Since": earlier}), data=b"new")
    assert_error(target, answer, 412, "Precondition Failed")
    assert target.request("GET", path(body)).body == b"original"


def test_replace_needs_the_owner_token(target):
    body = unlimited(target, b"original")
    assert_error(target, target.request("PUT", path(body), data=b"new"), 401, "Unauthorized")
    wrong = target.request("PUT", path(body), headers={"X-Owner-Token": "nope"}, data=b"new")
    assert_error(target, wrong, 403, "Forbidden")
    assert target.request("GET", path(body)).body == b"original"


def test_replace_without_a_file_part_is_400(target):
    body = unlimited(target, b"original")
    # A multipart body whose only file part has no filename: nothing was chosen to send.
    answer = target.request("PUT", path(body), headers=owner(body), files={"file": ("", b"")})
    assert_error(target, answer, 400, "Bad Request")
    assert target.request("GET", path(body)).body == b"original"


def test_patch_max_downloads(target):
    body = uploaded(target, b"patched")
    answer = target.request("PATCH", path(body), headers=owner(body), json={"max_downloads": 2})
    assert answer.status == 200, answer
    assert answer.json()["max_downloads"] == 2
    assert row(target, body["filehash"]).max_downloads == 2
    assert target.request("GET", path(body)).status == 200
    assert target.request("GET", path(body)).status == 200
    assert target.request("GET", path(body)).status == 410


def test_patch_max_downloads_to_what_was_used_makes_it_gone(target):
    body = unlimited(target)
    for _ in range(2):
        # A precondition keeps these from nginx's fast path, which counts late: the app
        # answers, and counts, each.
        assert target.request("GET", path(body), headers={"If-None-Match": '"other"'}).status == 200
    used = row(target, body["filehash"]).downloads
    assert used == 2
    answer = target.request("PATCH", path(body), headers=owner(body), json={"max_downloads": used})
    assert answer.status == 200
    assert_error(target, target.request("GET", path(body)), 410, "Gone")
    assert row(target, body["filehash"]).status == "gone"


def test_patch_expires_in(target):
    body = uploaded(target)
    before = now().replace(microsecond=0)
    answer = target.request("PATCH", path(body), headers=owner(body), json={"expires_in": "1h"})
    assert answer.status == 200
    assert before + timedelta(hours=1) <= iso(answer.json()["expires_at"]) <= now() + timedelta(hours=1)
    # No expiry (null) is refused under the default cap (MAX_EXPIRES_IN).
    answer = target.request("PATCH", path(body), headers=owner(body), json={"expires_in": None})
    assert_error(target, answer, 400, "Bad Request")
    assert row(target, body["filehash"]).expires_at is not None
    answer = target.request("PATCH", path(body), headers=owner(body), json={"expires_in": 120})
    assert before + timedelta(seconds=120) <= iso(answer.json()["expires_at"]) <= now() + timedelta(seconds=120)


def test_patch_password_sets_and_removes_it(target):
    body = unlimited(target, b"guarded")
    answer = target.request("PATCH", path(body), headers=owner(body), json={"password": "new pw"})
    assert answer.status == 200
    assert_error(target, target.request("GET", path(body)), 401, "Unauthorized")
    assert target.request("GET", path(body), headers={"X-Password": "new pw"}).body == b"guarded"
    assert row(target, body["filehash"]).password_hash not in (None, "new pw")

    answer = target.request("PATCH", path(body), headers=owner(body), json={"password": None})
    assert answer.status == 200
    assert row(target, body["filehash"]).password_hash is None
    assert target.request("GET", path(body)).body == b"guarded"


@pytest.mark.parametrize(
    "payload",
    [
        {"json": {"colour": "blue"}},
        {"json": {"max_downloads": 1, "owner": "me"}},
        {"json": ["max_downloads", 1]},
        {"json": {"max_downloads": -1}},
        {"json": {"max_downloads": "many"}},
        {"json": {"expires_in": "soon"}},
        {"json": {"password": 1234}},
        {"data": b"max_downloads=3", "headers": {"Content-Type": "application/x-www-form-urlencoded"}},
        {"data": b"{not json", "headers": {"Content-Type": "application/json"}},
    ],
    ids=["unknown-key", "unknown-beside-known", "list", "negative", "not-a-number", "bad-expiry",
         "password-not-string", "form", "broken-json"],
)
def test_patch_bad_input_is_400(target, payload):
    body = uploaded(target)
    headers = owner(body, **payload.get("headers", {}))
    answer = target.request("PATCH", path(body), headers=headers, json=payload.get("json"), data=payload.get("data"))
    assert_error(target, answer, 400, "Bad Request")
    record = row(target, body["filehash"])
    assert (record.max_downloads, record.password_hash) == (1, None)


def test_patch_needs_the_owner_token(target):
    body = uploaded(target)
    assert_error(target, target.request("PATCH", path(body), json={"max_downloads": 0}), 401, "Unauthorized")
    answer = target.request("PATCH", path(body), headers={"X-Owner-Token": "nope"}, json={"max_downloads": 0})
    assert_error(target, answer, 403, "Forbidden")
    assert row(target, body["filehash"]).max_downloads == 1


def test_managing_a_gone_file_is_410(target):
    body = uploaded(target)
    target.request("GET", path(body))
    assert_error(target, target.request("PATCH", path(body), headers=owner(body), json={"max_downloads": 0}), 410, "Gone")
    assert_error(target, target.request("PUT", path(body), headers=owner(body), data=b"new"), 410, "Gone")
