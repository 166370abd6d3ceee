"""Hostile and malformed requests (issue 13): every answer is the API's JSON error with a
phrase of errors.PHRASES and a request id, never a 5xx, through the Flask client and
through a real gunicorn (raw sockets, so that the bytes are exactly the ones written
here: malformed chunked bodies, missing bodies, forged internal headers).

Requests that gunicorn itself refuses before the app sees them (request lines too long,
Transfer-Encoding beside Content-Length) are the edge's half of issue 13, not here.
"""

from __future__ import annotations

import http.client
import io
import json
import socket
from dataclasses import dataclass, field

import pytest

from support.operators import live_operator_token, operator_token
from vimeo_api.errors import PHRASES

API = "/vimeo/api/v1.0"
DEEP = ('{"a":' * 100_000 + "1" + "}" * 100_000).encode()
DEEP_LIST = ("[" * 100_000 + "]" * 100_000).encode()


# -- one request, two ways of sending it ------------------------------------------------

@dataclass
class Req:
    """A request as bytes: ``path`` is sent as written (percent-escapes included);
    ``{public}``, ``{guarded}``, ``{token}`` name the files and secrets a test made."""

    method: str
    path: str
    headers: dict = field(default_factory=dict)
    body: bytes | None = None
    expect: int = 400


@dataclass
class Answer:
    status: int
    headers: dict
    body: bytes


def flask_send(client, req: Req, world: dict) -> Answer:
    path = req.path.format(**world)
    headers = {k: v.format(**world) for k, v in req.headers.items()}
    # The test client computes Content-Length from the data: a declared one goes in as is.
    overrides = {"CONTENT_LENGTH": headers.pop("Content-Length")} if "Content-Length" in headers else {}
    response = client.open(path, method=req.method, headers=headers, data=req.body, environ_overrides=overrides)
    return Answer(response.status_code, {k.lower(): v for k, v in response.headers.items()}, response.get_data())


def raw_send(host: str, port: int, head: bytes, body: bytes = b"") -> Answer:
    """Send exactly these bytes; read one answer."""
    with socket.create_connection((host, port), timeout=20) as sock:
        sock.sendall(head + body)
        sock.shutdown(socket.SHUT_WR)  # a body cut short ends here, not at a timeout
        response = http.client.HTTPResponse(sock)
        response.begin()
        data = response.read()
        return Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, data)


def live_send(server, req: Req, world: dict) -> Answer:
    host, port = server.base.removeprefix("http://").split(":")
    path = req.path.format(**world)
    lines = [f"{req.method} {path} HTTP/1.1", f"Host: {host}:{port}", "Connection: close"]
    headers = {k: v.format(**world) for k, v in req.headers.items()}
    if req.body is not None and "Transfer-Encoding" not in headers:
        headers.setdefault("Content-Length", str(len(req.body)))
    lines += [f"{k}: {v}" for k, v in headers.items()]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return raw_send(host, int(port), head, req.body or b"")


def assert_json_error(answer: Answer, expected: int, what: str = "") -> dict:
    """The API's error: the status expected, JSON with the phrase, a request id."""
    assert answer.status == expected, (what, answer.status, answer.body[:300])
    assert answer.status < 500, what
    assert answer.headers.get("content-type", "").startswith("application/json"), (what, answer.headers)
    body = json.loads(answer.body)
    assert set(body) == {"error", "message", "request_id"}, (what, body)
    assert body["error"] == PHRASES[answer.status], (what, body)
    assert isinstance(body["message"], str) and body["message"], what
    assert body["request_id"] and body["request_id"] == answer.headers.get("x-request-id"), (what, body)
    assert b"Traceback" not in answer.body and b".py" not in answer.body, what
    return body


def multipart(parts: list[tuple[str, str | None, bytes]], boundary: str = "XyZ") -> tuple[dict, bytes]:
    """(headers, body) of a multipart/form-data body: (name, filename or None, value)."""
    chunks = []
    for name, filename, value in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
        chunks.append(f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + value + b"\r\n")
    body = b"".join(chunks) + f"--{boundary}--\r\n".encode()
    return {"Content-Type": f"multipart/form-data; boundary={boundary}"}, body


# -- the three findings of the issue, each on both servers -------------------------------

OWNER = {"X-Owner-Token": "{owner}", "Content-Type": "application/json"}
JSON_ROUTES = [
    Req("PATCH", API + "/file/{public}", OWNER, DEEP),
    Req("PATCH", API + "/file/{public}", OWNER, DEEP_LIST),
    Req("POST", API + "/file/{public}/tokens", OWNER, DEEP),
    Req("POST", API + "/purge", {"Authorization": "Bearer {operator}", "Content-Type": "application/json"}, DEEP),
]


def make_world_flask(app) -> dict:
    client = app.test_client()
    public = _upload_flask(client, b"public bytes", max_downloads="0")
    guarded = _upload_flask(client, b"guarded bytes", max_downloads="0", password="s3cret")
    return {"public": public["filehash"], "owner": public["owner_token"], "guarded": guarded["filehash"],
            "operator": operator_token(app), "etag": public["etag"]}


def _upload_flask(client, content: bytes, **fields) -> dict:
    data = {"file": (io.BytesIO(content), "f.txt"), **fields}
    answer = client.put(API + "/file", data=data, content_type="multipart/form-data")
    assert answer.status_code == 201, answer.get_data()
    return answer.get_json()


def make_world_live(server) -> dict:
    import requests

    def up(content, **fields):
        answer = requests.put(server.api + "/file", files={"file": ("f.txt", content)}, data=fields, timeout=10)
        assert answer.status_code == 201, answer.text
        return answer.json()

    public = up(b"public bytes", max_downloads="0")
    guarded = up(b"guarded bytes", max_downloads="0", password="s3cret")
    return {"public": public["filehash"], "owner": public["owner_token"], "guarded": guarded["filehash"],
            "operator": live_operator_token(server.env), "etag": public["etag"]}


@pytest.mark.parametrize("req", JSON_ROUTES, ids=["patch-object", "patch-list", "tokens", "purge"])
def test_deeply_nested_json_is_a_400_on_every_route_that_reads_json(make_app, req):
    app = make_app(backend="sqlite")
    assert_json_error(flask_send(app.test_client(), req, make_world_flask(app)), 400, req.path)


def test_deeply_nested_json_is_a_400_through_gunicorn(gunicorn_server):
    server = gunicorn_server(workers=1, threads=2)
    world = make_world_live(server)
    for req in JSON_ROUTES:
        assert_json_error(live_send(server, req, world), 400, req.path)
    assert "RecursionError" not in server.log()


def test_a_malformed_chunked_upload_is_a_400(gunicorn_server):
    server = gunicorn_server(workers=1, threads=2)
    host, port = server.base.removeprefix("http://").split(":")
    head = (f"PUT {API}/upload/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            "Connection: close\r\n\r\n").encode()
    for body in (b"ZZZ\r\nabc\r\n0\r\n\r\n",  # not a chunk size
                 b"3\r\nabcdef\r\n0\r\n\r\n",  # a chunk longer than its size
                 b"3;\x01=x\r\nabc\r\n0\r\n\r\n"):  # a control character in an extension
        assert_json_error(raw_send(host, int(port), head, body), 400, body)
    # A multipart body in a broken chunked encoding, and one cut off mid-chunk.
    mp_headers, mp_body = multipart([("file", "a.txt", b"abc")])
    head = (f"PUT {API}/file HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            f"Content-Type: {mp_headers['Content-Type']}\r\nConnection: close\r\n\r\n").encode()
    assert_json_error(raw_send(host, int(port), head, b"zz\r\n" + mp_body), 400, "multipart")
    assert_json_error(raw_send(host, int(port), head, b"ffff\r\n" + mp_body), 400, "cut off")
    assert "Traceback" not in server.log()
    assert _stored_files(server.env["VIMEO_STORAGE_DIR"]) == []


def _stored_files(storage: str) -> list[str]:
    from pathlib import Path

    root = Path(storage)
    return sorted(str(p) for p in root.rglob("*") if p.is_file()) if root.exists() else []


def test_a_body_file_header_without_a_body_is_a_400_when_the_offload_is_off(make_app, gunicorn_server):
    """A client can send X-Vimeo-Body-File to gunicorn directly on the embedded default:
    a 400 that names the header, nothing stored, no 500."""
    app = make_app(backend="sqlite")
    answer = app.test_client().put(API + "/upload/x", headers={"X-Vimeo-Body-File": "/etc/passwd"},
                                   environ_overrides={"CONTENT_LENGTH": None})
    body = assert_json_error(Answer(answer.status_code, {k.lower(): v for k, v in answer.headers.items()},
                                    answer.get_data()), 400)
    assert "X-Vimeo-Body-File" in body["message"]

    server = gunicorn_server(workers=1, threads=2)
    host, port = server.base.removeprefix("http://").split(":")
    head = (f"PUT {API}/upload/x HTTP/1.1\r\nHost: x\r\nX-Vimeo-Body-File: /etc/passwd\r\n"
            "Connection: close\r\n\r\n").encode()
    assert_json_error(raw_send(host, int(port), head), 400)
    assert _stored_files(server.env["VIMEO_STORAGE_DIR"]) == []


# -- fifty more of our own, each through both servers --------------------------------------

JSON = {"Content-Type": "application/json"}
BEARER = {"Authorization": "Bearer {operator}"}
_mp, _ = multipart([])
NO_BOUNDARY = {"Content-Type": "multipart/form-data"}
MP = _mp


def _mp_body(*parts):
    return multipart(list(parts))[1]


MALFORMED = [
    Req("GET", API + "/file/not-a-hash", expect=404),
    Req("GET", API + "/file/" + "A" * 32, expect=404),
    Req("GET", API + "/file/%00", expect=404),
    Req("GET", API + "/file/..%2f..%2fetc%2fpasswd", expect=404),
    Req("GET", API + "/file/%ff%fe", expect=404),
    Req("GET", API + "/nothing-here", expect=404),
    Req("GET", "/" + "x" * 2000, expect=404),
    Req("POST", API + "/file", expect=405),
    Req("TRACE", API + "/file/{public}", expect=405),
    Req("BREW", API + "/file/{public}", expect=405),
    Req("PUT", API + "/file", body=b"", expect=400),
    Req("PUT", API + "/file", NO_BOUNDARY, b"--x\r\n\r\n", expect=400),
    Req("PUT", API + "/file", MP, b"this is not multipart at all", expect=400),
    Req("PUT", API + "/file", MP, _mp_body(("file", None, b"a field, not a file")), expect=400),
    Req("PUT", API + "/file", MP, _mp_body(("file", "", b"no filename")), expect=400),
    Req("PUT", API + "/file", MP, _mp_body(("file", "a.txt", b"x"), ("max_downloads", None, b"-1")), expect=400),
    Req("PUT", API + "/file", MP, _mp_body(("file", "a.txt", b"x"), ("expires_in", None, b"soon")), expect=400),
    Req("PUT", API + "/file", MP, _mp_body(("file", "a.txt", b"x"), ("expires_in", None, b"9" * 40)), expect=400),
    Req("PUT", API + "/file", MP, _mp_body(("file", "a.txt", b"x"), ("password", None, b"p" * 2000)), expect=400),
    Req("PUT", API + "/file", MP, _mp_body(("file", "a.txt", b"x"), ("note", None, b"n" * 200_000)), expect=413),
    Req("PUT", API + "/upload/x", {"X-Max-Downloads": "1e9"}, b"x", expect=400),
    Req("PUT", API + "/upload/x", {"X-Max-Downloads": "\u00b2"}, b"x", expect=400),
    Req("PUT", API + "/upload/x", {"X-Expires-In": "-5"}, b"x", expect=400),
    Req("PUT", API + "/upload/x", {"X-Expires-In": "1y"}, b"x", expect=400),
    Req("PUT", API + "/upload/x", {"Content-Length": "99999999999"}, b"", expect=413),
    Req("PATCH", API + "/file/{public}", {"X-Owner-Token": "{owner}", **JSON}, b"not json", expect=400),
    Req("PATCH", API + "/file/{public}", {"X-Owner-Token": "{owner}", **JSON}, b"\xff\xfe\x00", expect=400),
    Req("PATCH", API + "/file/{public}", {"X-Owner-Token": "{owner}", **JSON}, b"[1, 2]", expect=400),
    Req("PATCH", API + "/file/{public}", {"X-Owner-Token": "{owner}", **JSON}, b'{"colour": "red"}', expect=400),
    Req("PATCH", API + "/file/{public}", {"X-Owner-Token": "{owner}", **JSON}, b'{"password": 123}', expect=400),
    Req("PATCH", API + "/file/{public}", {"X-Owner-Token": "{owner}", **JSON}, b'{"max_downloads": NaN}', expect=400),
    Req("PATCH", API + "/file/{public}", {"X-Owner-Token": "{owner}", **JSON}, b'{"max_downloads": 1e400}', expect=400),
    Req("PATCH", API + "/file/{public}", {"X-Owner-Token": "{owner}", **JSON},
        b'{"max_downloads": 1' + b"0" * 5000 + b"}", expect=400),
    Req("PATCH", API + "/file/{public}", {"X-Owner-Token": "{owner}", **JSON}, b'{"expires_in": true}', expect=400),
    Req("PATCH", API + "/file/{public}", JSON, b'{"max_downloads": 2}', expect=401),
    Req("PATCH", API + "/file/{public}", {"X-Owner-Token": "wrong", **JSON}, b'{"max_downloads": 2}', expect=403),
    Req("DELETE", API + "/file/{public}", expect=401),
    Req("DELETE", API + "/file/{public}", {"Authorization": "Bearer not-a-token"}, expect=401),
    Req("DELETE", API + "/file/{public}", {"Authorization": "Bearer "}, expect=401),
    Req("PUT", API + "/file/{public}", {"X-Owner-Token": "{owner}", "If-Match": '"stale"'}, b"new", expect=412),
    Req("POST", API + "/file/{public}/versions", expect=401),
    Req("POST", API + "/file/{public}/tokens", {"X-Owner-Token": "{owner}", **JSON}, b'{"expires_in": -1}', expect=400),
    Req("POST", API + "/file/{public}/tokens", {"X-Owner-Token": "{owner}", **JSON}, b'{"expires_in": "1h"}', expect=400),
    Req("POST", API + "/file/{public}/tokens", {"X-Owner-Token": "{owner}", **JSON},
        b'{"expires_in": 1' + b"0" * 400 + b"}", expect=400),
    Req("POST", API + "/file/{public}/tokens", {"X-Owner-Token": "{owner}", **JSON}, b"[]", expect=400),
    Req("POST", API + "/file/{public}/tokens", {"X-Owner-Token": ""}, expect=403),
    Req("DELETE", API + "/file/{public}/tokens", expect=401),
    Req("DELETE", API + "/file/{public}/tokens", {"X-Owner-Token": "wrong"}, expect=403),
    Req("GET", API + "/t/garbage", expect=401),
    Req("GET", API + "/t/" + "A" * 1500 + ".sig", expect=401),
    Req("GET", API + "/t/%00.%00", expect=401),
    Req("GET", API + "/v/garbage", expect=404),
    Req("GET", API + "/file/{guarded}", {"Authorization": "Basic !!!not-base64"}, expect=401),
    Req("GET", API + "/file/{guarded}", {"Authorization": "Basic /w=="}, expect=401),
    Req("GET", API + "/file/{guarded}?password=%ff%fe", expect=401),
    Req("GET", API + "/file/{guarded}", {"X-Password": "\u00e9t\u00e9"}, expect=401),
    Req("GET", API + "/file/{public}", {"Range": "bytes=999999-"}, expect=416),
    Req("GET", API + "/file/{public}", {"If-Match": '"nope"'}, expect=412),
    Req("GET", API + "/files", expect=401),
    Req("GET", API + "/files?limit=abc", BEARER, expect=400),
    Req("GET", API + "/files?limit=1000", BEARER, expect=400),
    Req("GET", API + "/files?cursor=%%%", BEARER, expect=400),
    Req("GET", API + "/files?status=sideways", BEARER, expect=400),
    Req("POST", API + "/purge", {**BEARER, **JSON}, b'{"type": "everything"}', expect=400),
    Req("POST", API + "/purge", {**BEARER, **JSON}, b'{"type": "url", "items": [1]}', expect=400),
    Req("POST", API + "/purge", {**BEARER, **JSON}, b'{"type": "url", "items": ["/etc/passwd"]}', expect=400),
    Req("POST", API + "/purge", {**BEARER, **JSON}, b'{"type": "prefix", "items": ["zz*"]}', expect=400),
    Req("GET", API + "/purge/not-an-id", BEARER, expect=404),
    Req("GET", API + "/stats", {"Authorization": "Basic dXNlcjpwYXNz"}, expect=401),
]


def _ids():
    return [f"{i:02d}-{r.method}-{r.expect}" for i, r in enumerate(MALFORMED)]


@pytest.mark.parametrize("req", MALFORMED, ids=_ids())
def test_malformed_requests_through_flask(make_app, req):
    app = make_app(backend="sqlite")
    assert_json_error(flask_send(app.test_client(), req, make_world_flask(app)), req.expect, req)


def test_malformed_requests_through_gunicorn(gunicorn_server):
    assert len(MALFORMED) >= 50
    server = gunicorn_server(workers=1, threads=4)
    world = make_world_live(server)
    failures = []
    for req in MALFORMED:
        try:
            assert_json_error(live_send(server, req, world), req.expect, req)
        except AssertionError as exc:
            failures.append(str(exc)[:300])
    assert failures == []
    assert "Traceback" not in server.log()
