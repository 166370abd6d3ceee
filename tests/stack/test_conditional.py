"""Conditional requests through nginx get the app's answer (issue 13): nginx's internal
locations and the fast path never apply preconditions of their own to what the app
decided. Each request goes to nginx and to gunicorn directly: both must answer what
``http_semantics.decide`` says, and what nginx sends must be the bytes that status
promises."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
import requests
from werkzeug.http import http_date, parse_date

from vimeo_api.http_semantics import Representation, decide

from support import API
from support.checks import assert_json_error, once
from support.uploads import upload

CONTENT = bytes(range(256)) * 40


def formats(moment) -> dict[str, str]:
    """One instant in the three date formats of RFC 9110 §5.6.7."""
    return {
        "imf": http_date(moment),
        "rfc850": moment.strftime("%A, %d-%b-%y %H:%M:%S GMT"),
        "asctime": f"{moment:%a %b} {moment.day:2d} {moment:%H:%M:%S %Y}",
    }


def cases(etag: str, last_modified: str) -> list[dict[str, str]]:
    lm = parse_date(last_modified)
    before, after = lm - timedelta(seconds=1), lm + timedelta(days=1)
    weak = "W/" + etag
    out = []
    for moment in (before, lm, after):
        for text in formats(moment).values():
            out += [{"If-Unmodified-Since": text}, {"If-Modified-Since": text}]
    # Not "": nginx's variables cannot tell an empty header from a missing one, so an
    # empty If-Unmodified-Since takes the fast path, whose static answer nginx's
    # not-modified filter then refuses (412). The one case left (README).
    invalid_dates = ["99999", "garbage", "Sun, 06 Nov 1994 08:49:37", "32 Jan 2020", "Mon, 99 Nov 2999 99:99:99 GMT"]
    for text in invalid_dates:
        out += [{"If-Unmodified-Since": text}, {"If-Modified-Since": text}]
    out += [
        {"If-Match": "*"}, {"If-Match": etag}, {"If-Match": '"other"'}, {"If-Match": weak},
        {"If-Match": f'"other", {etag}'}, {"If-Match": "not-a-tag"},
        {"If-None-Match": "*"}, {"If-None-Match": etag}, {"If-None-Match": '"other"'}, {"If-None-Match": weak},
        {"If-None-Match": f'"a", "b", {weak}'}, {"If-None-Match": "not-a-tag"},
        # Precedence (RFC 9110 §13.2.2): If-Match before If-Unmodified-Since, If-None-Match
        # before If-Modified-Since.
        {"If-Match": etag, "If-Unmodified-Since": http_date(before)},
        {"If-Match": '"other"', "If-Unmodified-Since": http_date(after)},
        {"If-None-Match": '"other"', "If-Modified-Since": http_date(after)},
        {"If-None-Match": etag, "If-Modified-Since": http_date(before)},
        {"If-Unmodified-Since": "99999", "If-None-Match": '"other"'},
        {"If-Unmodified-Since": "99999", "If-Modified-Since": "99999"},
        # With ranges, which the internal locations and the fast path handle.
        {"If-Unmodified-Since": "99999", "Range": "bytes=0-9"},
        {"If-Unmodified-Since": http_date(after), "Range": "bytes=10-19"},
        {"If-Unmodified-Since": http_date(before), "Range": "bytes=0-9"},
        {"If-Match": etag, "Range": "bytes=0-9"},
        {"If-None-Match": '"other"', "Range": "bytes=-5"},
        {"If-Modified-Since": "99999", "Range": "bytes=0-"},
        {"If-Range": etag, "Range": "bytes=0-9"},
        {"If-Range": '"other"', "Range": "bytes=0-9"},
        {"If-Range": last_modified, "Range": "bytes=0-9"},
        {"If-Range": "99999", "Range": "bytes=0-9"},
        {"If-Range": http_date(after), "Range": "bytes=0-9"},
    ]
    return out


def compare(stack, path: str, headers: dict, rep: Representation) -> None:
    decision = decide("GET", headers, rep)
    through = requests.get(stack.base + API + path, headers=headers, timeout=30)
    app = requests.get(stack.app_base + API + path, headers=headers, timeout=30)
    # The app's own answer: its decision, or (a 200 or 206 nginx sends) X-Accel-Redirect.
    assert app.status_code == decision.status or (decision.status in (200, 206) and "X-Accel-Redirect" in app.headers)
    assert through.status_code == decision.status, (headers, through.status_code, app.status_code)
    if decision.status == 200:
        assert through.content == CONTENT, headers
    elif decision.status == 206:
        (start, stop), = decision.ranges
        assert through.content == CONTENT[start:stop], headers
        assert once(through, "Content-Range") == decision.content_range
    elif decision.status == 304:
        assert through.content == b""
        assert once(through, "ETag") == f'"{rep.etag}"'
    else:
        assert_json_error(through, 412, "Precondition Failed")


@pytest.mark.parametrize("kind", ["file", "version"])
def test_every_conditional_request_gets_the_apps_answer(stack, kind):
    body = upload(stack, CONTENT, "data.bin", max_downloads=0)
    path = f"/file/{body['filehash']}"
    if kind == "version":
        made = requests.post(stack.base + API + path + "/versions", headers={"X-Owner-Token": body["owner_token"]},
                             timeout=10)
        path = f"/v/{made.json()['version_id']}"
    # Hot: nginx answers plain downloads of it from its grant (the fast path).
    deadline = time.monotonic() + 5
    while requests.get(stack.base + API + path, timeout=10).headers.get("X-Cache") != "HIT":
        assert time.monotonic() < deadline, "never reached the fast path"
        time.sleep(0.05)
    last_modified = requests.head(stack.base + API + path, timeout=10).headers["Last-Modified"]
    rep = Representation(etag=body["sha256"], last_modified=parse_date(last_modified), size=len(CONTENT))
    for headers in cases(f'"{body["sha256"]}"', last_modified):
        compare(stack, path, headers, rep)


def test_an_invalid_if_unmodified_since_is_ignored_as_the_app_does(stack):
    """The case of issue 13: ``If-Unmodified-Since: 99999`` on a public file was nginx's
    412 (it evaluated the date against the blob's mtime); the app ignores it."""
    body = upload(stack, CONTENT, "data.bin", max_downloads=0)
    answer = requests.get(f"{stack.base}{API}/file/{body['filehash']}", headers={"If-Unmodified-Since": "99999"},
                          timeout=10)
    assert (answer.status_code, answer.content) == (200, CONTENT)
