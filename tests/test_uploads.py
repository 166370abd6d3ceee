"""uploads.py: reading an upload out of a request, filenames and content types."""

from __future__ import annotations

import hashlib
import io
import os

import pytest
from flask import request
from werkzeug.exceptions import BadRequest, ClientDisconnected

from vimeo_api.storage import UploadFile
from vimeo_api.uploads import content_type_for, multipart_file, raw_body


@pytest.fixture
def flask_app(make_app):
    return make_app()  # SQLite: nothing here touches the database


def tmp_listing(app) -> list[str]:
    tmp = os.path.join(app.config["STORAGE_DIR"], "tmp")
    return os.listdir(tmp) if os.path.isdir(tmp) else []


def multipart(app, files: dict, **fields):
    data = {**fields, **{name: (io.BytesIO(content), filename) for name, (filename, content) in files.items()}}
    return app.test_request_context("/", method="PUT", data=data, content_type="multipart/form-data")


# -- multipart -------------------------------------------------------------------------

def test_multipart_file_streams_the_part_into_an_upload_file(flask_app):
    with multipart(flask_app, {"file": ("report.txt", b"quarterly")}, password="pw"):
        upload, filename, declared = multipart_file(request)
        assert isinstance(upload, UploadFile)
        assert os.path.dirname(upload.path) == os.path.join(flask_app.config["STORAGE_DIR"], "tmp")
        assert (upload.sha256, upload.size) == (hashlib.sha256(b"quarterly").hexdigest(), 9)
        assert filename == "report.txt"
        assert declared == "text/plain"  # what the test client declared for .txt
        assert request.form["password"] == "pw"
        path = upload.path
        assert os.path.exists(path)
    # Not placed: the request's end removes it.
    assert not os.path.exists(path)
    assert tmp_listing(flask_app) == []


def test_multipart_prefers_the_part_named_file(flask_app):
    with multipart(flask_app, {"other": ("a.txt", b"a"), "file": ("b.txt", b"b")}):
        _upload, filename, _ = multipart_file(request)
        assert filename == "b.txt"
    assert tmp_listing(flask_app) == []


def test_multipart_takes_the_first_file_part_otherwise(flask_app):
    with multipart(flask_app, {"attachment": ("c.txt", b"c")}):
        upload, filename, _ = multipart_file(request)
        assert (filename, upload.size) == ("c.txt", 1)


@pytest.mark.parametrize("files", [{}, {"file": ("", b"")}])
def test_multipart_without_a_file_is_400(flask_app, files):
    with multipart(flask_app, files, note="no file here"):
        with pytest.raises(BadRequest) as info:
            multipart_file(request)
        assert "file" in info.value.description
    assert tmp_listing(flask_app) == []


# -- raw body --------------------------------------------------------------------------

def test_raw_body_copies_the_stream(flask_app):
    content = os.urandom(100_000)
    with flask_app.test_request_context("/", method="PUT", data=content):
        upload = raw_body(request)
        assert (upload.sha256, upload.size) == (hashlib.sha256(content).hexdigest(), len(content))
        path = upload.path
    assert not os.path.exists(path)  # closed with the request, never placed


def test_raw_body_cut_short_leaves_nothing(flask_app):
    with flask_app.test_request_context(
        "/", method="PUT", input_stream=io.BytesIO(b"only part"), environ_overrides={"CONTENT_LENGTH": "1000"}
    ):
        with pytest.raises(ClientDisconnected):
            raw_body(request)
    assert tmp_listing(flask_app) == []


def test_raw_body_empty(flask_app):
    with flask_app.test_request_context("/", method="PUT", data=b""):
        upload = raw_body(request)
        assert (upload.size, upload.sha256) == (0, hashlib.sha256(b"").hexdigest())


# -- content_type_for ------------------------------------------------------------------

@pytest.mark.parametrize(
    "declared, filename, expected",
    [
        ("image/png", "x.txt", "image/png"),
        ("Image/PNG", "x", "image/png"),
        ("text/plain; charset=utf-8", "x.bin", "text/plain"),
        ("application/octet-stream", "x.txt", "text/plain"),
        ("binary/octet-stream", "x.json", "application/json"),
        ("application/x-www-form-urlencoded", "x.html", "text/html"),
        ("multipart/form-data; boundary=x", "x.svg", "image/svg+xml"),
        ("", "x.txt", "text/plain"),
        (None, "x.txt", "text/plain"),
        ("not a type", "x.txt", "text/plain"),
        ("text/html\r\nX-Injected: 1", "x.txt", "text/plain"),
        (None, "no-extension", "application/octet-stream"),
        (None, "archive.unknownext", "application/octet-stream"),
    ],
)
def test_content_type_for(declared, filename, expected):
    assert content_type_for(declared, filename) == expected
