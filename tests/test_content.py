"""Conformance: published versions and signed tokens (SPEC 3.5, 3.6), on every target."""

from __future__ import annotations

import os
from datetime import datetime, timezone

import pytest

from support.polling import wait_until
from support.uploads import upload

IMMUTABLE = "public, max-age=31536000, immutable"
TOKEN_CLASS = "private, no-store, no-cache, must-revalidate"


def _owner(up):
    return {"X-Owner-Token": up["owner_token"]}


def _blob_files(target) -> list[str]:
    return target.stored("blobs")


def test_a_published_version_keeps_its_bytes_after_the_file_is_replaced(target):
    up = upload(target, b"first content", "doc.txt", max_downloads=0, password="pw")
    published = target.request("POST", f"/file/{up['filehash']}/versions", headers=_owner(up))
    assert published.status == 201
    body = published.json()
    assert set(body) == {"version_id", "url", "etag"}
    assert len(body["version_id"]) == 32
    assert body["etag"] == up["etag"]
    assert body["url"].endswith(f"/vimeo/api/v1.0/v/{body['version_id']}")

    replaced = target.request(
        "PUT", f"/file/{up['filehash']}", headers={**_owner(up), "Content-Type": "text/plain"}, data=b"second content"
    )
    assert replaced.status == 200
    old = target.request("GET", body["url"])  # no password needed
    assert old.status == 200
    assert old.body == b"first content"
    assert old.headers["ETag"] == up["etag"]
    assert old.headers["Cache-Control"] == IMMUTABLE
    assert old.headers["Content-Length"] == str(len(b"first content"))
    new = target.request("GET", f"/file/{up['filehash']}", headers={"X-Password": "pw"})
    assert new.body == b"second content"
    assert new.headers["ETag"] != up["etag"]
    # versions use no downloads
    assert target.sql("select downloads from files")[0][0] == 1


def test_a_version_answers_conditional_and_range_requests(target):
    up = upload(target, b"0123456789abcdef", "v.bin", max_downloads=1)
    url = target.request("POST", f"/file/{up['filehash']}/versions", headers=_owner(up)).json()["url"]
    assert target.request("GET", url, headers={"If-None-Match": up["etag"]}).status == 304
    part = target.request("GET", url, headers={"Range": "bytes=2-5"})
    assert part.status == 206
    assert part.body == b"2345"
    assert part.headers["Content-Range"] == "bytes 2-5/16"
    head = target.request("HEAD", url)
    assert head.status == 200 and head.body == b""
    assert head.headers["Cache-Control"] == IMMUTABLE
    # the one-time file itself is still unused: versions never consume downloads
    assert target.request("GET", f"/file/{up['filehash']}").status == 200
    assert target.request("GET", url).status == 200


def test_deleting_the_file_retires_its_versions(target):
    up = upload(target, b"soon gone", "g.txt", max_downloads=0)
    url = target.request("POST", f"/file/{up['filehash']}/versions", headers=_owner(up)).json()["url"]
    assert target.request("DELETE", f"/file/{up['filehash']}", headers=_owner(up)).status == 202
    gone = target.request("GET", url)
    assert gone.status == 410
    assert gone.json()["error"] == "Gone"


def test_publishing_needs_the_owner(target):
    up = upload(target, b"x", "x.txt")
    assert target.request("POST", f"/file/{up['filehash']}/versions").status == 401
    assert target.request("POST", f"/file/{up['filehash']}/versions", headers={"X-Owner-Token": "nope"}).status == 403
    assert target.request("POST", f"/file/{'0' * 32}/versions", headers=_owner(up)).status == 404
    assert target.request("GET", "/v/" + "0" * 32).status == 404


def test_identical_bytes_are_stored_once_and_outlive_one_deletion(target):
    content = os.urandom(2048)
    a = upload(target, content, "a.bin", max_downloads=0)
    b = upload(target, content, "b.bin", max_downloads=0)
    assert a["sha256"] == b["sha256"]
    assert len(_blob_files(target)) == 1
    assert target.sql("select refcount from blobs")[0][0] == 2
    assert target.request("DELETE", f"/file/{a['filehash']}", headers=_owner(a)).status == 202
    still = target.request("GET", f"/file/{b['filehash']}")
    assert still.status == 200
    assert still.body == content
    assert len(_blob_files(target)) == 1


def test_a_token_url_serves_the_file_until_it_expires(target):
    up = upload(target, b"token me", "t.txt", max_downloads=0)
    issued = target.request("POST", f"/file/{up['filehash']}/tokens", headers=_owner(up), json={"expires_in": 60})
    assert issued.status == 201
    body = issued.json()
    assert set(body) == {"token", "url", "expires_at"}
    assert body["url"].endswith("/vimeo/api/v1.0/t/" + body["token"])
    got = target.request("GET", body["url"])
    assert got.status == 200
    assert got.body == b"token me"
    assert got.headers["Cache-Control"] == TOKEN_CLASS
    assert target.request("HEAD", body["url"]).status == 200


def test_tokens_use_downloads_like_any_other(target):
    up = upload(target, b"once", "once.txt", max_downloads=1)
    url = target.request("POST", f"/file/{up['filehash']}/tokens", headers=_owner(up)).json()["url"]
    assert target.request("GET", url).status == 200
    assert target.request("GET", url).status == 410
    assert target.request("GET", f"/file/{up['filehash']}").status == 410


def test_a_tampered_token_is_401_and_an_expired_one_403(target):
    up = upload(target, b"t", "t.txt", max_downloads=0)
    token = target.request("POST", f"/file/{up['filehash']}/tokens", headers=_owner(up)).json()["token"]
    tampered = token[:-1] + ("A" if token[-1] != "A" else "B")
    r = target.request("GET", "/t/" + tampered)
    assert r.status == 401
    assert r.json()["error"] == "Unauthorized"
    # a token that expired: issued for 1 s, then let lapse (the stack's clock is its
    # own process's: asked until it answers otherwise, every answer before is a 200)
    short = target.request("POST", f"/file/{up['filehash']}/tokens", headers=_owner(up), json={"expires_in": 1})
    expires_at = datetime.strptime(short.json()["expires_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    assert 0 < (expires_at - datetime.now(timezone.utc)).total_seconds() <= 2

    def lapsed():
        answer = target.request("GET", short.json()["url"])
        assert answer.status in (200, 403), answer
        return answer if answer.status != 200 else None

    r = wait_until(lapsed, 2 + 5, "the token never expired", interval=0.1)
    assert datetime.now(timezone.utc) >= expires_at
    assert r.status == 403
    assert r.json()["error"] == "Forbidden"


def test_a_token_for_a_deleted_file_is_410(target):
    up = upload(target, b"t", "t.txt", max_downloads=0)
    url = target.request("POST", f"/file/{up['filehash']}/tokens", headers=_owner(up)).json()["url"]
    target.request("DELETE", f"/file/{up['filehash']}", headers=_owner(up))
    assert target.request("GET", url).status == 410


def test_the_password_may_issue_tokens_too(target):
    up = upload(target, b"p", "p.txt", password="open sesame")
    assert target.request("POST", f"/file/{up['filehash']}/tokens").status == 401
    assert target.request("POST", f"/file/{up['filehash']}/tokens", headers={"X-Password": "wrong"}).status == 401
    ok = target.request("POST", f"/file/{up['filehash']}/tokens", headers={"X-Password": "open sesame"})
    assert ok.status == 201
    # the token grants the download without the password
    assert target.request("GET", ok.json()["url"]).status == 200


def _readable_payload(token: str):
    """What anyone holding a token can read of it (itsdangerous: zlib and base64)."""
    from itsdangerous import URLSafeSerializer

    return URLSafeSerializer("no key needed to read").load_payload(token.rsplit(".", 1)[0].encode())


def test_a_token_does_not_reveal_the_files_permanent_url(target):
    """Issue 13: a link's holder must not rebuild /file/<filehash> from it, to download
    there once the link has expired."""
    up = upload(target, b"secret report", "r.txt", max_downloads=0, password="pw")
    body = target.request("POST", f"/file/{up['filehash']}/tokens", headers=_owner(up), json={"expires_in": 60}).json()
    payload = _readable_payload(body["token"])
    assert set(payload) == {"t", "e"}
    assert up["filehash"] not in str(payload) and up["filehash"] not in body["url"]
    # The link id is not the filehash under another name: stored hashed, per link.
    stored = target.sql("select token_hash from download_tokens")
    assert [row[0] for row in stored] != [payload["t"]] and len(stored) == 1
    assert target.request("GET", body["url"]).body == b"secret report"


def test_a_password_change_revokes_the_files_links(target):
    up = upload(target, b"guarded", "g.txt", max_downloads=0, password="old")
    by_owner = target.request("POST", f"/file/{up['filehash']}/tokens", headers=_owner(up)).json()["url"]
    by_password = target.request("POST", f"/file/{up['filehash']}/tokens", headers={"X-Password": "old"}).json()["url"]
    assert target.request("GET", by_owner).status == 200
    changed = target.request("PATCH", f"/file/{up['filehash']}", headers=_owner(up), json={"password": "new"})
    assert changed.status == 200
    for url in (by_owner, by_password):
        answer = target.request("GET", url)
        assert answer.status == 403, answer
        assert answer.json()["error"] == "Forbidden" and "revoked" in answer.json()["message"]
        assert target.request("HEAD", url).status == 403
    # Links issued after the change work; removing the password revokes them too.
    fresh = target.request("POST", f"/file/{up['filehash']}/tokens", headers={"X-Password": "new"}).json()["url"]
    assert target.request("GET", fresh).status == 200
    assert target.request("PATCH", f"/file/{up['filehash']}", headers=_owner(up), json={"password": None}).status == 200
    assert target.request("GET", fresh).status == 403


def test_the_owner_revokes_every_link_of_a_file(target):
    up = upload(target, b"shared", "s.txt", max_downloads=0)
    other = upload(target, b"other", "o.txt", max_downloads=0)
    urls = [target.request("POST", f"/file/{up['filehash']}/tokens", headers=_owner(up)).json()["url"] for _ in range(3)]
    kept = target.request("POST", f"/file/{other['filehash']}/tokens", headers=_owner(other)).json()["url"]
    revoke = f"/file/{up['filehash']}/tokens"
    assert target.request("DELETE", revoke).status == 401
    assert target.request("DELETE", revoke, headers={"X-Owner-Token": other["owner_token"]}).status == 403
    answer = target.request("DELETE", revoke, headers=_owner(up))
    assert (answer.status, answer.json()) == (200, {"status": "Links Revoked", "revoked": 3})
    for url in urls:
        assert target.request("GET", url).status == 403
    assert target.request("GET", kept).status == 200  # another file's links are untouched
    assert target.request("DELETE", revoke, headers=_owner(up)).json()["revoked"] == 0
    # The file itself, and new links, still serve.
    assert target.request("GET", f"/file/{up['filehash']}").status == 200
    new = target.request("POST", revoke, headers=_owner(up)).json()["url"]
    assert target.request("GET", new).status == 200


@pytest.mark.parametrize("body", [{"expires_in": 0}, {"expires_in": "60"}, {"expires_in": 10**9}, ["x"]])
def test_bad_token_requests_are_400(target, body):
    up = upload(target, b"t", "t.txt")
    r = target.request("POST", f"/file/{up['filehash']}/tokens", headers=_owner(up), json=body)
    assert r.status == 400
    assert r.json()["error"] == "Bad Request"
