"""errors.py: every error is one JSON shape, with the original product's phrases."""

from __future__ import annotations

import errno
import os

import pytest
from flask import g
from sqlalchemy.exc import OperationalError
from werkzeug.exceptions import BadRequest, MethodNotAllowed, RequestedRangeNotSatisfiable

from support import API
from support.uploads import upload

from vimeo_api import files, storage
from vimeo_api.errors import PHRASES, error_response

# SPEC 3.4, exactly: the original clients match on these strings.
SPEC_PHRASES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method not Allowed",
    409: "Conflict",
    410: "Gone",
    412: "Precondition Failed",
    413: "Request Entity Too Large",
    415: "Unsupported Media Type",
    416: "Range Not Satisfiable",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
    507: "Insufficient Storage",
}


@pytest.fixture
def flask_app(make_app):
    return make_app()


def assert_shape(response, status: int) -> dict:
    assert response.status_code == status
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert set(body) == {"error", "message", "request_id"}
    assert body["error"] == SPEC_PHRASES[status]
    assert isinstance(body["message"], str) and body["message"]
    text = response.get_data(as_text=True)
    assert "Traceback" not in text and ".py" not in text
    return body


@pytest.mark.parametrize("status, phrase", sorted(SPEC_PHRASES.items()))
def test_phrases_are_the_specs(status, phrase):
    assert PHRASES[status] == phrase


@pytest.mark.parametrize("status", sorted(SPEC_PHRASES))
def test_error_response_shape(flask_app, status):
    with flask_app.test_request_context():
        g.request_id = "req-1"
        response = error_response(status)
        body = assert_shape(response, status)
        assert body["request_id"] == "req-1"
        assert response.headers["Cache-Control"] == "no-store"


def test_error_response_keeps_extra_headers_but_not_content_headers(flask_app):
    with flask_app.test_request_context():
        g.request_id = "r"
        response = error_response(
            429,
            "Slow down.",
            [("Retry-After", "7"), ("Content-Type", "text/html"), ("Content-Length", "99")],
        )
        assert response.get_json()["message"] == "Slow down."
        assert response.headers["Retry-After"] == "7"
        assert response.mimetype == "application/json"
        assert response.headers["Content-Length"] == str(len(response.get_data()))


def routes(app):
    def bad_request():
        raise BadRequest("Explain what was wrong.")

    def plain_bad_request():
        raise BadRequest()

    def crash():
        raise RuntimeError(f"secret internals at {app.config['STORAGE_DIR']}/x.py")

    def disk_full():
        raise OSError(errno.ENOSPC, "No space left on device", app.config["STORAGE_DIR"])

    def database_down():
        raise OperationalError("select 1", {}, Exception("could not connect to server"))

    def range_not_satisfiable():
        raise RequestedRangeNotSatisfiable(length=42)

    def not_allowed():
        raise MethodNotAllowed(valid_methods=["GET", "HEAD"])

    for view in (bad_request, plain_bad_request, crash, disk_full, database_down, range_not_satisfiable, not_allowed):
        app.add_url_rule(f"/test/{view.__name__}", view_func=view)
    return app.test_client()


def test_http_exception_keeps_its_description(flask_app):
    body = assert_shape(routes(flask_app).get("/test/bad_request"), 400)
    assert body["message"] == "Explain what was wrong."


def test_http_exception_without_description_gets_a_plain_message(flask_app):
    body = assert_shape(routes(flask_app).get("/test/plain_bad_request"), 400)
    assert "<" not in body["message"]  # not werkzeug's HTML-ish default


def test_unexpected_exception_is_a_json_500_without_internals(flask_app, caplog):
    response = routes(flask_app).get("/test/crash")
    body = assert_shape(response, 500)
    assert "secret internals" not in response.get_data(as_text=True)
    assert flask_app.config["STORAGE_DIR"] not in response.get_data(as_text=True)
    assert body["request_id"] == response.headers["X-Request-Id"]
    # The trace goes to the log, for the operator.
    assert any("secret internals" in (r.exc_text or "") or r.exc_info for r in caplog.records)


def test_full_disk_is_507(flask_app):
    response = routes(flask_app).get("/test/disk_full")
    assert_shape(response, 507)
    assert flask_app.config["STORAGE_DIR"] not in response.get_data(as_text=True)


def test_database_down_is_503_with_retry_after(flask_app):
    response = routes(flask_app).get("/test/database_down")
    body = assert_shape(response, 503)
    assert response.headers["Retry-After"] == "5"
    assert "select" not in body["message"]


def test_416_keeps_content_range(flask_app):
    response = routes(flask_app).get("/test/range_not_satisfiable")
    assert_shape(response, 416)
    assert response.headers["Content-Range"] == "bytes */42"


def test_405_keeps_allow(flask_app):
    response = routes(flask_app).get("/test/not_allowed")
    assert_shape(response, 405)
    assert response.headers["Allow"] == "GET, HEAD"


def test_request_id_is_echoed_or_made(flask_app):
    client = flask_app.test_client()
    given = client.get("/nowhere", headers={"X-Request-Id": "abc-123.x_y"})
    assert assert_shape(given, 404)["request_id"] == "abc-123.x_y"
    assert given.headers["X-Request-Id"] == "abc-123.x_y"
    for bad in ("has space", "x" * 129, "<script>", ""):
        made = client.get("/nowhere", headers={"X-Request-Id": bad})
        request_id = assert_shape(made, 404)["request_id"]
        assert request_id != bad and len(request_id) == 32
        assert made.headers["X-Request-Id"] == request_id


def test_missing_bytes_are_a_500_that_uses_no_download_and_hides_the_path(flask_app):
    client = flask_app.test_client()
    body = upload(client, b"vanishing", "v.txt")
    with flask_app.app_context():
        os.unlink(storage.current().blob_path(body["sha256"]))
    response = client.get(f"{API}/file/{body['filehash']}")
    assert_shape(response, 500)
    assert flask_app.config["STORAGE_DIR"] not in response.get_data(as_text=True)
    assert body["sha256"] not in response.get_data(as_text=True)
    with flask_app.app_context():
        assert files.find(body["filehash"]).downloads == 0
