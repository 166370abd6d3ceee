"""access.py: whether a request may have a file, in the contract's order."""

from __future__ import annotations

import base64
from datetime import datetime

import pytest
from flask import request
from sqlalchemy import text
from werkzeug.exceptions import Forbidden, Gone, NotFound, Unauthorized

from vimeo_api import access, files, storage
from vimeo_api.extensions import db
from vimeo_api.files import Options


@pytest.fixture
def ctx(app):
    with app.app_context():
        yield app


def new_file(**options):
    upload = storage.current().new_upload()
    upload.write(b"guarded")
    return files.create(upload, "f.txt", "text/plain", Options(**options))


def basic(username: str, password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()}


def asking(app, path: str = "/", **headers):
    return app.test_request_context(path, headers=headers)


# -- supplied_password -----------------------------------------------------------------

@pytest.mark.parametrize(
    "path, headers, expected",
    [
        ("/", {}, None),
        ("/?password=q", {}, "q"),
        ("/", {"X-Password": "h"}, "h"),
        ("/", basic("user", "b"), "b"),
        ("/", basic("", "b:with:colons"), "b:with:colons"),
        # X-Password first, then the query, then Basic.
        ("/?password=q", {"X-Password": "h", **basic("u", "b")}, "h"),
        ("/?password=q", basic("u", "b"), "q"),
        ("/", {"X-Password": "", **basic("u", "b")}, ""),
        ("/", {"Authorization": "Bearer abc"}, None),
        ("/?password=", {}, ""),
    ],
)
def test_supplied_password(make_app, path, headers, expected):
    with make_app().test_request_context(path, headers=headers):
        assert access.supplied_password(request) == expected


# -- downloadable ----------------------------------------------------------------------

def test_downloadable_returns_the_file(ctx):
    file, _ = new_file()
    with asking(ctx):
        assert access.downloadable(file.filehash, request).id == file.id


@pytest.mark.parametrize("filehash", ["0" * 32, "zz", "A" * 32, "../" * 11, ""])
def test_unknown_or_malformed_hash_is_404(ctx, filehash):
    new_file()
    with asking(ctx):
        with pytest.raises(NotFound):
            access.downloadable(filehash, request)


def test_uppercase_hash_is_404(ctx):
    file, _ = new_file()
    with asking(ctx):
        with pytest.raises(NotFound):
            access.find_or_404(file.filehash.upper())


def test_gone_before_password(ctx):
    file, _ = new_file(password="pw")
    files.mark_gone(file.id, "deleted")
    with asking(ctx):  # no password: still 410, not 401
        with pytest.raises(Gone):
            access.downloadable(file.filehash, request)


def test_expired_is_gone_before_any_sweep(ctx):
    file, _ = new_file(max_downloads=0)
    db.session.execute(text("update files set expires_at = :t where id = :i"), {"t": datetime(2000, 1, 1), "i": file.id})
    db.session.commit()
    db.session.expire_all()
    with asking(ctx):
        with pytest.raises(Gone):
            access.downloadable(file.filehash, request)


def test_used_up_is_gone(ctx):
    file, _ = new_file(max_downloads=1)
    files.consume_download(file.id, file.size, file.sha256, file.access_version)
    with asking(ctx):
        with pytest.raises(Gone):
            access.downloadable(file.filehash, request)


def test_password_checked_with_www_authenticate(ctx):
    file, _ = new_file(password="pw")
    for headers in ({}, {"X-Password": "wrong"}, basic("u", "wrong")):
        with asking(ctx, **headers):
            with pytest.raises(Unauthorized) as info:
                access.downloadable(file.filehash, request)
        assert dict(info.value.get_headers())["WWW-Authenticate"] == f'Basic realm="{access.REALM}"'
    with asking(ctx, "/?password=pw"):
        assert access.downloadable(file.filehash, request).id == file.id


# -- owned -----------------------------------------------------------------------------

def test_owned_needs_the_token(ctx):
    file, token = new_file()
    with asking(ctx):
        with pytest.raises(Unauthorized):
            access.owned(file.filehash, request)
    with asking(ctx, **{"X-Owner-Token": "wrong"}):
        with pytest.raises(Forbidden):
            access.owned(file.filehash, request)
    with asking(ctx, **{"X-Owner-Token": token}):
        assert access.owned(file.filehash, request).id == file.id


def test_owned_token_of_another_file_is_403(ctx):
    file, _ = new_file()
    _other, other_token = new_file()
    with asking(ctx, **{"X-Owner-Token": other_token}):
        with pytest.raises(Forbidden):
            access.owned(file.filehash, request)


def test_owned_order_404_then_token_then_410(ctx):
    file, token = new_file()
    files.mark_gone(file.id, "deleted")
    with asking(ctx, **{"X-Owner-Token": token}):
        with pytest.raises(NotFound):
            access.owned("0" * 32, request)
        with pytest.raises(Gone):
            access.owned(file.filehash, request)
    with asking(ctx, **{"X-Owner-Token": "wrong"}):
        with pytest.raises(Forbidden):  # a stranger learns nothing about the file's state
            access.owned(file.filehash, request)
