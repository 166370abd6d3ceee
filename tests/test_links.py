"""One-time links that work for people (issue 16), on every deployment (``target``: the
app on SQLite and PostgreSQL, and the stack through nginx): robots and prefetches use no
download, browsers get the landing page and its form makes the one download, 410 says
why, and the owner reads what happened.

Real clients (curl, wget, python-requests) against real servers, cut-off downloads and
their resumption are in tests/test_resume.py; Chromium in tests/test_browser.py.
"""

from __future__ import annotations

import io
import re
import time
from datetime import datetime

import pytest
from test_api import DATA, assert_error, path, row, uploaded
from test_previews import BROWSER_ACCEPT, CHROME, PREFETCHES, PREVIEW_USER_AGENTS

from vimeo_api.errors import GONE_MESSAGES
from vimeo_api.landing import content_security_policy

BROWSER = {"Accept": BROWSER_ACCEPT, "User-Agent": CHROME}


def owner(body: dict) -> dict:
    return {"X-Owner-Token": body["owner_token"]}


def assert_page(answer, status: int = 200) -> str:
    """The landing page: HTML under the strict policy, no script, nothing cached."""
    assert answer.status == status, answer
    assert answer.headers["Content-Type"] == "text/html; charset=utf-8"
    assert answer.headers["Content-Security-Policy"] == content_security_policy()
    assert answer.headers["Content-Security-Policy"].startswith("default-src 'none'; style-src 'sha256-")
    assert answer.headers["Cache-Control"] == "private, no-store"
    assert answer.headers["X-Robots-Tag"] == "noindex, nofollow, noarchive"
    text = answer.body.decode("utf-8")
    assert "<script" not in text.lower()
    assert "http://" not in text and "https://" not in text  # no external asset
    return text


def downloads_of(target, body: dict, *, complete: bool = True) -> list[dict]:
    """The owner's list; with ``complete``, polled until every transfer's bytes are known
    (nginx's log line is written as its answer ends)."""
    deadline = time.monotonic() + 10
    while True:
        answer = target.request("GET", path(body) + "/downloads", headers=owner(body))
        assert answer.status == 200, answer
        events = answer.json()["downloads"]
        if not complete or all(e["bytes_sent"] is not None for e in events) or time.monotonic() > deadline:
            return events
        time.sleep(0.05)


# -- the landing page ------------------------------------------------------------------

def test_a_browser_gets_the_page_and_its_button_makes_the_one_download(target):
    body = uploaded(target, DATA, "report 2026.pdf", content_type="application/pdf")
    page = assert_page(target.request("GET", path(body), headers=BROWSER))
    assert "report 2026.pdf" in page
    assert "1,000 bytes" in page and "application/pdf" in page
    assert re.search(r'id="downloads-left">1 of 1<', page)
    assert re.search(r'<form method="post" action="/vimeo/api/v1\.0/file/[0-9a-f]{32}">', page)
    assert DATA.decode("latin-1") not in page
    assert row(target, body["filehash"]).downloads == 0
    assert target.request("HEAD", path(body), headers=BROWSER).headers["Content-Type"].startswith("text/html")

    answer = target.request("POST", path(body), headers=BROWSER, data={})
    assert (answer.status, answer.body) == (200, DATA)
    assert answer.headers["Content-Disposition"].startswith("attachment;")
    assert answer.headers["Cache-Control"] == "private, no-store"
    assert row(target, body["filehash"]).downloads == 1

    gone = assert_page(target.request("GET", path(body), headers=BROWSER), 410)
    assert 'data-reason="downloaded"' in gone
    assert_error(target, target.request("GET", path(body)), 410, "Gone", "downloaded")
    assert_error(target, target.request("POST", path(body)), 410, "Gone", "downloaded")


def test_the_page_escapes_what_the_uploader_chose(target):
    body = uploaded(target, DATA, "<img src=x onerror=alert(1)>.txt")
    page = assert_page(target.request("GET", path(body), headers=BROWSER))
    assert "<img" not in page
    assert 'id="filename">&lt;img src=x onerror=alert(1)&gt;.txt<' in page


def test_robots_and_prefetches_get_no_bytes_and_use_no_download(target):
    body = uploaded(target)
    for agent in PREVIEW_USER_AGENTS:
        for accept in ("*/*", BROWSER_ACCEPT):
            answer = target.request("GET", path(body), headers={"User-Agent": agent, "Accept": accept})
            assert_page(answer)
            assert DATA not in answer.body
    for headers in PREFETCHES:
        answer = target.request("GET", path(body), headers={"User-Agent": CHROME, "Accept": "*/*", **headers})
        assert_page(answer)
        assert DATA not in answer.body
    # A robot asking for a range gets no bytes either.
    ranged = target.request("GET", path(body), headers={"User-Agent": PREVIEW_USER_AGENTS[0], "Range": "bytes=0-9"})
    assert_page(ranged)
    assert row(target, body["filehash"]).downloads == 0
    # Then the person the link was meant for downloads it, once.
    answer = target.request("GET", path(body))
    assert (answer.status, answer.body) == (200, DATA)
    assert row(target, body["filehash"]).downloads == 1
    assert_error(target, target.request("GET", path(body)), 410, "Gone", "downloaded")


@pytest.mark.parametrize("accept", ["*/*", None, "text/html, */*", "application/octet-stream"])
def test_clients_that_do_not_prefer_html_get_the_bytes_and_use_one_download(target, accept):
    body = uploaded(target)
    headers = {"User-Agent": "curl/8.14.1"} | ({"Accept": accept} if accept else {})
    answer = target.request("GET", path(body), headers=headers)
    assert (answer.status, answer.body) == (200, DATA)
    assert row(target, body["filehash"]).downloads == 1


def test_a_public_file_is_no_page_even_for_a_browser(target):
    body = uploaded(target, max_downloads=0)
    answer = target.request("GET", path(body), headers=BROWSER)
    assert (answer.status, answer.body) == (200, DATA)


def test_a_password_protected_file_asks_for_its_password_on_the_page(target):
    body = uploaded(target, DATA, "private.bin", password="s3cret", max_downloads=0)
    page = assert_page(target.request("GET", path(body), headers=BROWSER))
    assert '<input type="password" id="password" name="password"' in page
    assert "private.bin" not in page and "1,000" not in page  # nothing the password protects

    wrong = target.request("POST", path(body), headers=BROWSER, data={"password": "guess"})
    text = assert_page(wrong, 401)
    assert wrong.headers["WWW-Authenticate"] == 'x-password-form realm="vimeo_api"'
    assert 'id="error"' in text and "not right" in text
    assert row(target, body["filehash"]).downloads == 0

    right = target.request("POST", path(body), headers=BROWSER, data={"password": "s3cret"})
    assert (right.status, right.body) == (200, DATA)
    assert right.headers["Content-Disposition"].startswith("attachment;")
    # A client that does not ask for HTML gets the API's answers on this route too.
    assert_error(target, target.request("POST", path(body), data={"password": "guess"}), 401, "Unauthorized")


def test_wrong_passwords_on_the_page_are_throttled_like_the_api(target):
    body = uploaded(target, password="s3cret")
    for _ in range(10):  # PASSWORD_RATE_LIMIT: 10/minute per file and address
        assert target.request("POST", path(body), headers=BROWSER, data={"password": "guess"}).status == 401
    throttled = target.request("POST", path(body), headers=BROWSER, data={"password": "s3cret"})
    text = assert_page(throttled, 429)
    assert int(throttled.headers["Retry-After"]) >= 1
    assert 'id="error"' in text and "Too many wrong passwords" in text
    # The API shares the budget.
    assert_error(target, target.request("GET", path(body), headers={"X-Password": "s3cret"}), 429, "Too Many Requests")
    assert row(target, body["filehash"]).downloads == 0


def test_a_token_link_has_the_page_too_and_needs_no_password_there(target):
    body = uploaded(target, password="s3cret")
    issued = target.request("POST", path(body) + "/tokens", headers=owner(body), json={"expires_in": 600})
    token_path = "/t/" + issued.json()["token"]
    page = assert_page(target.request("GET", token_path, headers=BROWSER))
    assert "data.bin" in page and 'type="password"' not in page
    assert row(target, body["filehash"]).downloads == 0
    answer = target.request("POST", token_path, headers=BROWSER, data={})
    assert (answer.status, answer.body) == (200, DATA)
    assert 'data-reason="downloaded"' in assert_page(target.request("GET", token_path, headers=BROWSER), 410)


def test_the_form_route_takes_forms_only(target):
    body = uploaded(target)
    answer = target.request("POST", path(body), headers={"Content-Type": "application/json"}, data=b'{"a": 1}')
    assert_error(target, answer, 415, "Unsupported Media Type")
    assert_error(target, target.request("POST", path(body), data={"password": "", "x": "1"}), 400, "Bad Request")
    assert row(target, body["filehash"]).downloads == 0


def test_the_landing_page_can_be_turned_off_for_browsers_but_not_for_robots(make_app):
    app = make_app(backend="sqlite", LANDING_PAGE=False)
    client = app.test_client()
    body = client.put("/vimeo/api/v1.0/file", data={"file": (io.BytesIO(DATA), "d.bin")}).get_json()
    url = "/vimeo/api/v1.0/file/" + body["filehash"]
    robot = client.get(url, headers={"User-Agent": PREVIEW_USER_AGENTS[0]})
    assert (robot.status_code, robot.mimetype) == (200, "text/html")
    browser = client.get(url, headers=BROWSER)
    assert (browser.status_code, browser.get_data()) == (200, DATA)
    assert client.get(url, headers=BROWSER).get_json()["reason"] == "downloaded"


# -- 410 says why ------------------------------------------------------------------------

def test_410_names_the_reason_on_every_download_route(target):
    used = uploaded(target)
    assert target.request("GET", path(used)).status == 200
    expired = uploaded(target)
    target.sql("update files set expires_at = :t where filehash = :h", t=datetime(2001, 1, 1), h=expired["filehash"])
    deleted = uploaded(target, max_downloads=0)
    token = target.request("POST", path(deleted) + "/tokens", headers=owner(deleted), json={}).json()["token"]
    version = target.request("POST", path(deleted) + "/versions", headers=owner(deleted)).json()["version_id"]
    assert target.request("DELETE", path(deleted), headers=owner(deleted)).status == 202

    for body, reason in ((used, "downloaded"), (expired, "expired"), (deleted, "deleted")):
        message = assert_error(target, target.request("GET", path(body)), 410, "Gone", reason)["message"]
        assert message == GONE_MESSAGES[reason]
        assert f'data-reason="{reason}"' in assert_page(target.request("GET", path(body), headers=BROWSER), 410)
        assert_error(target, target.request("PATCH", path(body), headers=owner(body), json={}), 410, "Gone", reason)
    assert_error(target, target.request("GET", "/t/" + token), 410, "Gone", "deleted")
    assert_error(target, target.request("GET", "/v/" + version), 410, "Gone", "deleted")


# -- the owner's list of downloads ---------------------------------------------------------

def test_the_list_of_downloads_is_the_owners_only(target):
    body = uploaded(target)
    listing = path(body) + "/downloads"
    assert_error(target, target.request("GET", listing), 401, "Unauthorized")
    assert_error(target, target.request("GET", listing, headers={"X-Owner-Token": "nope"}), 403, "Forbidden")
    assert_error(target, target.request("GET", "/file/" + "0" * 32 + "/downloads", headers=owner(body)), 404, "Not Found")
    answer = target.request("GET", listing, headers=owner(body))
    assert (answer.status, answer.json()) == (200, {"downloads": []})
    assert answer.headers["Cache-Control"] == "no-store"
    # Deleting a file deletes its history for the API.
    assert target.request("DELETE", path(body), headers=owner(body)).status == 202
    assert_error(target, target.request("GET", listing, headers=owner(body)), 410, "Gone", "deleted")


def test_the_list_shows_each_transfer_also_once_the_file_is_used_up(target):
    body = uploaded(target, max_downloads=2)
    page_only = target.request("GET", path(body), headers=BROWSER)
    assert page_only.status == 200
    first = target.request("GET", path(body), headers={"Range": "bytes=0-99"})
    assert (first.status, first.body) == (206, DATA[:100])
    rest = target.request("GET", path(body), headers={"Range": "bytes=100-", "If-Range": body["etag"]})
    assert (rest.status, rest.body) == (206, DATA[100:])
    assert row(target, body["filehash"]).downloads == 1  # the rest was a resumption
    whole = target.request("POST", path(body), headers=BROWSER, data={})
    assert (whole.status, whole.body) == (200, DATA)
    assert "X-Vimeo-Transfer" not in whole.headers  # nginx keeps it to itself
    assert_error(target, target.request("GET", path(body)), 410, "Gone", "downloaded")

    events = downloads_of(target, body)  # used up: the list is still the owner's
    assert [(e["bytes_sent"], e["completed"], e["resumed"]) for e in events] == [
        (100, False, False),  # its resumption says the client lacked the rest
        (900, True, True),
        (1000, True, False),
    ]
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", e["at"]) for e in events)
    assert all("client" not in e for e in events)  # DOWNLOADS_CLIENT_ADDRESS is off


def test_the_client_address_is_listed_only_when_the_operator_allows_it(make_app):
    app = make_app(backend="sqlite", DOWNLOADS_CLIENT_ADDRESS=True)
    client = app.test_client()
    body = client.put("/vimeo/api/v1.0/file", data={"file": (io.BytesIO(DATA), "d.bin")}).get_json()
    with client.get("/vimeo/api/v1.0/file/" + body["filehash"], environ_base={"REMOTE_ADDR": "192.0.2.7"}) as answer:
        assert answer.get_data() == DATA
    events = client.get(f"/vimeo/api/v1.0/file/{body['filehash']}/downloads", headers=owner(body)).get_json()
    assert events == {"downloads": [{"at": events["downloads"][0]["at"], "bytes_sent": 1000, "completed": True,
                                     "resumed": False, "client": "192.0.2.7"}]}
