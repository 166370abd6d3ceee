"""Hostile and malformed requests, over raw sockets, to both deployments: the embedded
default (gunicorn alone, as ``make run`` starts it) and the stack (nginx in front).

Whoever answers (the app, gunicorn, nginx), every answer is the API's JSON error with
the phrase of its status and a request id (also in X-Request-Id), and never a 5xx. A
connection closed without an answer is accepted only for the cases that say why HTTP
leaves no way to answer there.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

import pytest

from deploy.stack import free_port, gunicorn_command, spawn, stop, wait_for_http
from support.raw_http import connect, exchange, read_answer, send_all
from vimeo_api.errors import PHRASES

API = "/vimeo/api/v1.0"
H = b"Host: files.test\r\n"
UNKNOWN = API.encode() + b"/file/" + b"0" * 32


@dataclass(frozen=True)
class Case:
    name: str
    data: bytes
    # Statuses this request may get, if only some are right; None: any 4xx.
    expect: tuple[int, ...] | None = None
    # Why no answer at all is acceptable (None: an answer is required).
    may_close: str | None = None


def get(path: bytes, *headers: bytes, version: bytes = b"HTTP/1.1") -> bytes:
    return b"GET " + path + b" " + version + b"\r\n" + H + b"".join(h + b"\r\n" for h in headers) + b"\r\n"


CASES = [
    # -- the known cases of issue 13
    Case("nul-in-path", get(API.encode() + b"/file/%00"), (400, 404)),
    Case("path-5000", get(API.encode() + b"/file/" + b"a" * 5000), (404,)),
    Case("path-9000", get(API.encode() + b"/file/" + b"a" * 9000), (414,)),
    Case("chunked-and-content-length",
         b"PUT " + API.encode() + b"/upload/x HTTP/1.1\r\n" + H
         + b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n5\r\nhello\r\n0\r\n\r\n", (400,)),
    # -- request lines
    Case("http-2.0", b"GET / HTTP/2.0\r\n\r\n", (400,)),
    Case("http-3.0", b"GET / HTTP/3.0\r\n" + H + b"\r\n", (400,)),
    Case("http-1.2", get(UNKNOWN, version=b"HTTP/1.2")),
    Case("http-1.10", get(UNKNOWN, version=b"HTTP/1.10")),
    Case("http-lowercase", get(UNKNOWN, version=b"http/1.1")),
    Case("http-no-version-digits", get(UNKNOWN, version=b"HTTP/")),
    Case("version-garbage", get(UNKNOWN, version=b"FOO/1.1")),
    Case("extra-word", b"GET / HTTP/1.1 extra\r\n" + H + b"\r\n"),
    Case("double-space", b"GET  / HTTP/1.1\r\n" + H + b"\r\n"),
    Case("tabs", b"GET\t/\tHTTP/1.1\r\n" + H + b"\r\n"),
    Case("no-target", b"GET HTTP/1.1\r\n" + H + b"\r\n"),
    Case("method-bad-char", b"G@T / HTTP/1.1\r\n" + H + b"\r\n"),
    Case("method-lowercase", b"get / HTTP/1.1\r\n" + H + b"\r\n"),
    Case("method-absurd", b"A" * 200 + b" " + UNKNOWN + b" HTTP/1.1\r\n" + H + b"\r\n"),
    Case("method-unknown", b"BREW " + UNKNOWN + b" HTTP/1.1\r\n" + H + b"\r\n"),
    Case("method-trace", b"TRACE / HTTP/1.1\r\n" + H + b"\r\n"),
    Case("method-connect", b"CONNECT files.test:443 HTTP/1.1\r\n" + H + b"\r\n"),
    Case("options-star", b"OPTIONS * HTTP/1.1\r\n" + H + b"\r\n"),
    Case("control-in-path", get(b"/\x01")),
    Case("nul-raw-in-path", get(b"/a\x00b")),
    Case("del-in-path", get(b"/a\x7fb")),
    Case("non-ascii-path", get(API.encode() + b"/file/\xc3\xa9\xff\xfe")),
    Case("bad-escape", get(b"/%zz")),
    Case("half-escape", get(API.encode() + b"/file/%4")),
    Case("encoded-nul-in-query", get(UNKNOWN + b"?password=%00")),
    Case("dot-segments-out", get(b"/../../etc/passwd")),
    Case("encoded-dot-segments", get(API.encode() + b"/file/%2e%2e/%2e%2e/%2e%2e/etc/passwd")),
    Case("encoded-slash", get(API.encode() + b"/file%2F..%2F..%2Fhealthz")),
    Case("absolute-form-other-host", get(b"http://other.test" + UNKNOWN)),
    Case("absolute-form-bad-scheme", get(b"gopher://other.test/")),
    Case("fragment", get(UNKNOWN + b"#frag")),
    Case("newline-in-path-escape", get(API.encode() + b"/file/%0d%0aSet-Cookie:%20x=1")),
    Case("bare-lf", b"GET " + UNKNOWN + b" HTTP/1.1\nHost: files.test\n\n"),
    Case("cr-in-request-line", b"GET /a\rb HTTP/1.1\r\n" + H + b"\r\n"),
    Case("h2-preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", (400,)),
    Case("tls-client-hello", bytes.fromhex("16030100a5010000a10303") + os.urandom(32) + b"\x00" * 20 + b"\r\n\r\n", (400,)),
    Case("ssh-banner", b"SSH-2.0-OpenSSH_9.2\r\n\r\n", (400,)),
    Case("proxy-protocol", b"PROXY TCP4 203.0.113.1 203.0.113.2 1 2\r\n" + get(UNKNOWN), (400,)),
    # -- header fields
    Case("no-host-1.1", b"GET " + UNKNOWN + b" HTTP/1.1\r\n\r\n"),
    Case("two-hosts", b"GET " + UNKNOWN + b" HTTP/1.1\r\n" + H + b"Host: other.test\r\n\r\n"),
    Case("host-with-space", b"GET " + UNKNOWN + b" HTTP/1.1\r\nHost: a b\r\n\r\n"),
    Case("host-with-slash", b"GET " + UNKNOWN + b" HTTP/1.1\r\nHost: ../../x\r\n\r\n"),
    Case("header-no-colon", get(UNKNOWN, b"NoColonHere")),
    Case("header-space-in-name", get(UNKNOWN, b"Bad Name: x")),
    Case("header-space-before-colon", get(UNKNOWN, b"X-Thing : x")),
    Case("header-nul-in-value", get(UNKNOWN, b"X-Thing: a\x00b")),
    Case("header-control-in-name", get(UNKNOWN, b"X-\x01Thing: a")),
    Case("header-obs-fold", get(UNKNOWN, b"X-Thing: a", b" folded")),
    Case("header-non-ascii-value", get(UNKNOWN, b"X-Thing: \xc3\xa9\xff")),
    Case("header-empty-name", get(UNKNOWN, b": value")),
    Case("header-line-9000", get(UNKNOWN, b"X-Big: " + b"a" * 9000), (431, 400)),
    Case("headers-total-40k", get(UNKNOWN, *[b"X-H%d: " % i + b"b" * 4000 for i in range(10)])),
    Case("headers-300", get(UNKNOWN, *[b"X-N%d: v" % i for i in range(300)]), (431,)),
    Case("header-name-9000", get(UNKNOWN, b"X" * 9000 + b": v"), (431, 400)),
    Case("content-length-negative",
         b"PUT " + API.encode() + b"/upload/x HTTP/1.1\r\n" + H + b"Content-Length: -1\r\n\r\n", (400,)),
    Case("content-length-text",
         b"PUT " + API.encode() + b"/upload/x HTTP/1.1\r\n" + H + b"Content-Length: abc\r\n\r\n", (400,)),
    Case("content-length-two-values",
         b"PUT " + API.encode() + b"/upload/x HTTP/1.1\r\n" + H + b"Content-Length: 5, 6\r\n\r\nhello", (400,)),
    Case("content-length-twice",
         b"PUT " + API.encode() + b"/upload/x HTTP/1.1\r\n" + H + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
         (400,)),
    Case("content-length-huge",
         b"PUT " + API.encode() + b"/upload/x HTTP/1.1\r\n" + H + b"Content-Length: 99999999999999999999999\r\n\r\n",
         (400, 413)),
    Case("content-length-over-limit",
         b"PUT " + API.encode() + b"/upload/x HTTP/1.1\r\n" + H + b"Content-Length: 999999999999\r\n\r\n", (413,)),
    Case("transfer-encoding-gzip", get(UNKNOWN, b"Transfer-Encoding: gzip"), (400,)),
    Case("transfer-encoding-chunked-twice",
         b"PUT " + UNKNOWN + b" HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n", (400,)),
    Case("transfer-encoding-in-1.0",
         b"PUT " + UNKNOWN + b" HTTP/1.0\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    Case("expect-unknown", get(UNKNOWN, b"Expect: 200-ok")),
    Case("x-request-id-hostile", get(UNKNOWN, b"X-Request-Id: ../../\"<script>")),
    Case("range-garbage-unknown-file", get(UNKNOWN, b"Range: bytes=--,,99999999999999999999999-")),
    Case("if-none-match-huge-list", get(UNKNOWN, b"If-None-Match: " + b", ".join([b'"x"'] * 1000))),
    Case("authorization-garbage", get(UNKNOWN, b"Authorization: Basic !!!notbase64")),
    Case("upgrade-h2c", get(UNKNOWN, b"Connection: Upgrade, HTTP2-Settings", b"Upgrade: h2c",
                            b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA")),
    Case("upgrade-websocket", get(UNKNOWN, b"Connection: Upgrade", b"Upgrade: websocket")),
    # -- chunked bodies, to routes that answer before reading the body (the app's own
    # reading of a malformed body is tests/test_uploads.py's)
    Case("chunk-size-not-hex",
         b"PUT " + UNKNOWN + b" HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"),
    Case("chunk-size-overflow",
         b"PUT " + UNKNOWN + b" HTTP/1.1\r\n" + H
         + b"Transfer-Encoding: chunked\r\n\r\nffffffffffffffffffffffff\r\nhello\r\n0\r\n\r\n"),
    Case("chunk-missing-terminator",
         b"PUT " + UNKNOWN + b" HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n"),
    Case("chunk-extension-control",
         b"PUT " + UNKNOWN + b" HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n5;\x00ext\r\nhello\r\n0\r\n\r\n"),
    Case("chunk-bad-trailer",
         b"PUT " + UNKNOWN + b" HTTP/1.1\r\n" + H
         + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nBad Trailer\r\n\r\n"),
    Case("chunked-purge-without-token",
         b"POST " + API.encode() + b"/purge HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\nzz\r\n",
         (400, 401)),
    # -- bodies where none is expected, and bodies that never end
    Case("get-with-body", b"GET " + UNKNOWN + b" HTTP/1.1\r\n" + H + b"Content-Length: 5\r\n\r\nhello", (404,)),
    Case("put-multipart-no-boundary",
         b"PUT " + API.encode() + b"/file HTTP/1.1\r\n" + H
         + b"Content-Type: multipart/form-data\r\nContent-Length: 5\r\n\r\nhello", (400,)),
]


# -- the two deployments ------------------------------------------------------------------

@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    """gunicorn alone with gunicorn.conf.py's defaults (four gthread workers of four
    threads) on SQLite, as ``make run`` starts it."""
    root = tmp_path_factory.mktemp("embedded")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIMEO_", "GUNICORN_"))}
    env.update({
        "VIMEO_DATABASE_URL": f"sqlite:///{root / 'db.sqlite3'}",
        "VIMEO_STORAGE_DIR": str(root / "storage"),
        "VIMEO_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "GUNICORN_BIND": f"127.0.0.1:{port}",
    })
    subprocess.run([sys.executable, "manage.py", "db", "upgrade"], env=env, check=True, capture_output=True,
                   cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = spawn(gunicorn_command(), env, root / "gunicorn.log")
    try:
        wait_for_http(f"http://127.0.0.1:{port}/healthz", procs=[proc])
        yield ("127.0.0.1", port)
    finally:
        stop(proc)


@pytest.fixture(params=["embedded", "stack"])
def deployment(request):
    """(host, port) of gunicorn alone, or of nginx in front of gunicorn."""
    if request.param == "embedded":
        return request.getfixturevalue("embedded")
    host, port = request.getfixturevalue("nginx_stack").base.removeprefix("http://").split(":")
    return host, int(port)


# -- checks -----------------------------------------------------------------------------

def assert_json_error(answer, case: Case) -> None:
    assert answer.status is not None, f"{case.name}: closed without an answer"
    assert 400 <= answer.status < 500, answer
    if case.expect:
        assert answer.status in case.expect, answer
    assert answer.header("Content-Type").split(";")[0] == "application/json", answer
    body = json.loads(answer.body)
    assert set(body) == {"error", "message", "request_id"}, body
    assert body["error"] == PHRASES[answer.status], body
    assert isinstance(body["message"], str) and body["message"], body
    assert body["request_id"] and answer.headers_named("X-Request-Id") == [body["request_id"]], answer
    assert b"<html" not in answer.body.lower()


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_every_answer_is_a_json_error(deployment, case):
    host, port = deployment
    answer = exchange(host, port, case.data, timeout=15)
    if answer.status is None and case.may_close:
        return
    assert_json_error(answer, case)


def test_there_are_fifty_cases_beside_the_known_ones():
    assert len(CASES) - 4 >= 50
    assert len({case.name for case in CASES}) == len(CASES)


def test_a_body_cut_short_is_answered_or_closed(deployment):
    """The client declares 1000 bytes, sends 10 and ends its side of the connection:
    there is no request to answer any more, so closing is acceptable; an answer, if any,
    must still be the JSON error."""
    host, port = deployment
    with connect(host, port, timeout=15) as sock:
        send_all(sock, b"PUT " + API.encode() + b"/upload/cut.bin HTTP/1.1\r\n" + H
                 + b"Content-Length: 1000\r\n\r\n" + b"x" * 10)
        sock.shutdown(socket.SHUT_WR)
        answer = read_answer(sock, timeout=15)
    if answer.status is not None:
        assert_json_error(answer, Case("cut", b""))


def test_a_request_line_that_never_ends_is_cut_off(deployment):
    """Bytes that never make a request line: the server gives up without answering once
    its buffer or its patience runs out (nothing was requested), or answers 4xx JSON."""
    host, port = deployment
    with connect(host, port, timeout=30) as sock:
        deadline = time.monotonic() + 25
        answer = None
        try:
            send_all(sock, b"GET /" + b"a" * 20000)
            answer = read_answer(sock, timeout=max(1.0, deadline - time.monotonic()))
        except TimeoutError:
            pytest.fail("the server neither answered nor closed a request line of 20000 bytes")
    if answer.status is not None:
        assert_json_error(answer, Case("endless", b"", (414, 400)))
