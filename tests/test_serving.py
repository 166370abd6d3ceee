"""vimeo_api/serving.py's pure parts: gunicorn's own refusals as the API's JSON, and the
access log's form of a path (no capability whole, no control character)."""

from __future__ import annotations

import json
from http import HTTPStatus

import pytest
from gunicorn.http import errors as http_errors

from vimeo_api.errors import PHRASES
from vimeo_api.serving import error_answer, error_bytes, escape, redact_path

FILEHASH = "0123456789abcdef0123456789abcdef"
TOKEN = "WyIwMTIzNDU2Nzg5YWJjZGVmMDEyMzQ1Njc4OWFiY2RlZiIsMTcwMF0.SIGNATURE_tail9"


@pytest.mark.parametrize(
    "path, logged",
    [
        (f"/vimeo/api/v1.0/file/{FILEHASH}", "/vimeo/api/v1.0/file/012345..."),
        (f"/vimeo/api/v1.0/file/{FILEHASH}/versions", "/vimeo/api/v1.0/file/012345.../versions"),
        (f"/vimeo/api/v1.0/v/{FILEHASH}", "/vimeo/api/v1.0/v/012345..."),
        (f"/vimeo/api/v1.0/t/{TOKEN}", "/vimeo/api/v1.0/t/..._tail9"),
        (f"/_vimeo/grant/f/01/{FILEHASH}", "/_vimeo/grant/f/01/012345..."),
        (f"/a/{FILEHASH}/{FILEHASH}/{FILEHASH}", "/a/012345.../012345.../012345..."),
        ("/vimeo/api/v1.0/upload/short.txt", "/vimeo/api/v1.0/upload/short.txt"),
        ("/vimeo/api/v1.0/t/short", "/vimeo/api/v1.0/t/short"),
        ("/healthz", "/healthz"),
        ("", ""),
    ],
)
def test_a_path_keeps_no_capability_whole(path, logged):
    assert redact_path(path) == logged
    for secret in (FILEHASH, TOKEN, TOKEN[:16], TOKEN[-16:]):
        assert secret not in redact_path(path)


def test_control_characters_and_quotes_are_escaped():
    assert escape('a\nb\r"c\\d\x00\x1b\x7f\x85é') == "a\\x0Ab\\x0D\\x22c\\x5Cd\\x00\\x1B\\x7F\\x85é"
    assert "\n" not in escape(redact_path("/file/x\n127.0.0.1 - - forged"))


@pytest.mark.parametrize(
    "exc, status",
    [
        (http_errors.LimitRequestLine(9000, 8190), 414),
        (http_errors.LimitRequestHeaders("too many"), 431),
        (http_errors.InvalidRequestLine("GET"), 400),
        (http_errors.InvalidRequestMethod("G@T"), 400),
        (http_errors.InvalidHTTPVersion("HTTP/2.0"), 400),
        (http_errors.InvalidHeader("CONTENT-LENGTH"), 400),
        (http_errors.InvalidHeaderName("bad name"), 400),
        (http_errors.UnsupportedTransferCoding("gzip"), 400),
        (http_errors.InvalidChunkSize(b"zz"), 400),
        (http_errors.ExpectationFailed("200-ok"), 417),
        (http_errors.ForbiddenProxyRequest("10.0.0.1"), 403),
    ],
)
def test_what_a_client_sent_is_a_4xx(exc, status):
    assert error_answer(exc)[0] == status


@pytest.mark.parametrize("exc", [http_errors.InvalidResponseHeader("X"), http_errors.ConfigurationProblem("x"),
                                 RuntimeError("a bug")])
def test_what_the_server_got_wrong_is_a_500(exc):
    assert error_answer(exc) is None


def test_the_answer_is_the_apis_json_error():
    data = error_bytes(414, "The address of the request is too long.", "rid-1")
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode().split("\r\n")
    assert lines[0] == f"HTTP/1.1 414 {HTTPStatus(414).phrase}"
    headers = dict(line.split(": ", 1) for line in lines[1:])
    assert headers["Content-Type"] == "application/json"
    assert headers["Connection"] == "close"
    assert headers["X-Request-Id"] == "rid-1"
    assert int(headers["Content-Length"]) == len(body)
    assert json.loads(body) == {"error": PHRASES[414], "message": "The address of the request is too long.",
                                "request_id": "rid-1"}
    assert error_bytes(400, "x", "rid-2", head=True).endswith(b"\r\n\r\n")
