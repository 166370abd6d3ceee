"""Conformance: the operator API (SPEC 3.7) with scoped bearer tokens, on every target;
and the ``tokens`` commands through the CLI runner."""

from __future__ import annotations

import json

import pytest

from support import API
from support.operators import bearer
from support.uploads import upload


def test_pages_through_every_file_once_while_files_are_added(target):
    token = target.operator_token("files:read")
    uploaded = {upload(target, f"file {i}".encode(), f"f{i}.txt")["filehash"] for i in range(5)}
    seen, cursor, pages = [], None, 0
    while True:
        r = target.request("GET", "/files?limit=2" + (f"&cursor={cursor}" if cursor else ""), headers=bearer(token))
        assert r.status == 200
        page = r.json()
        assert len(page["files"]) <= 2
        seen += [f["filehash"] for f in page["files"]]
        pages += 1
        if pages == 1:  # added while paging: must still be listed, exactly once
            uploaded.add(upload(target, b"late", "late.txt")["filehash"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) == 6
    assert set(seen) == uploaded
    assert pages == 3


def test_the_status_filter(target):
    token = target.operator_token("files:read")
    kept = upload(target, b"kept", "k.txt", max_downloads=0)
    used = upload(target, b"used", "u.txt")
    assert target.request("GET", used["url"]).status == 200
    available = target.request("GET", "/files?status=available", headers=bearer(token)).json()["files"]
    gone = target.request("GET", "/files?status=gone", headers=bearer(token)).json()["files"]
    assert [f["filehash"] for f in available] == [kept["filehash"]]
    assert [f["filehash"] for f in gone] == [used["filehash"]]
    assert gone[0]["gone_reason"] == "downloaded"
    assert "owner_token" not in gone[0] and "password_hash" not in gone[0]


@pytest.mark.parametrize("query", ["limit=0", "limit=101", "limit=x", "cursor=%%%", "status=weird"])
def test_bad_list_parameters_are_400(target, query):
    token = target.operator_token("files:read")
    r = target.request("GET", "/files?" + query, headers=bearer(token))
    assert r.status == 400
    assert r.json()["error"] == "Bad Request"


def test_stats_count_files_bytes_and_downloads(target):
    token = target.operator_token("stats:read")
    a = upload(target, b"a" * 100, "a.bin")
    upload(target, b"b" * 50, "b.bin", max_downloads=0)
    assert target.request("GET", a["url"]).status == 200
    stats = target.request("GET", "/stats", headers=bearer(token)).json()
    assert stats["files"] == {"available": {"files": 1, "bytes": 50}, "gone": {"files": 1, "bytes": 100}}
    assert stats["downloads"] == 1
    assert stats["bytes_served"] == 100
    assert stats["stored"]["blobs"] == 2


def test_tokens_need_the_right_scope(target):
    reader = target.operator_token("files:read")
    assert target.request("GET", "/files").status == 401
    assert target.request("GET", "/files", headers=bearer("vmo_unknown")).status == 401
    assert target.request("GET", "/files", headers={"Authorization": "Basic eDp5"}).status == 401
    wrong = target.request("GET", "/stats", headers=bearer(reader))
    assert wrong.status == 403
    assert wrong.json()["error"] == "Forbidden"


def test_an_operator_with_files_write_deletes_any_file(target):
    writer = target.operator_token("files:write")
    reader = target.operator_token("files:read")
    up = upload(target, b"doomed", "d.txt", max_downloads=0)
    assert target.request("DELETE", f"/file/{up['filehash']}", headers=bearer(reader)).status == 403
    r = target.request("DELETE", f"/file/{up['filehash']}", headers=bearer(writer))
    assert r.status == 202
    assert r.json() == {"status": "File Deletion Scheduled"}
    assert target.request("GET", up["url"]).status == 410


def test_tokens_commands_create_list_and_revoke(app, runner, client):
    created = runner.invoke(args=["tokens", "create", "--name", "ci", "--scope", "files:read", "--json"])
    assert created.exit_code == 0, created.output
    info = json.loads(created.output)
    assert info["scopes"] == ["files:read"] and info["token"].startswith("vmo_")
    assert client.get(API + "/files", headers=bearer(info["token"])).status_code == 200

    listed = runner.invoke(args=["tokens", "list", "--json"])
    assert listed.exit_code == 0
    rows = [json.loads(line) for line in listed.output.splitlines()]
    assert rows == [{"id": info["id"], "name": "ci", "scopes": ["files:read"], "state": "active"}]
    assert info["token"] not in listed.output

    revoked = runner.invoke(args=["tokens", "revoke", str(info["id"])])
    assert revoked.exit_code == 0
    assert client.get(API + "/files", headers=bearer(info["token"])).status_code == 401
    missing = runner.invoke(args=["tokens", "revoke", "999"])
    assert missing.exit_code != 0
    assert "no token with id 999" in missing.output


def test_tokens_create_refuses_an_unknown_scope(runner):
    result = runner.invoke(args=["tokens", "create", "--name", "x", "--scope", "root"])
    assert result.exit_code != 0
