"""cli.py: the ``manage.py`` commands through the CLI runner, on SQLite and PostgreSQL.

Each command is checked by its output and exit code, and by what it did (the HTTP
answer for a file it deleted, the rows and bytes behind it).
"""

from __future__ import annotations

import json
import os
from datetime import timedelta

from sqlalchemy import text

from support import API
from support.operators import operator_token
from support.uploads import upload

from vimeo_api.extensions import db
from vimeo_api.models import utcnow


def lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.strip()]


def json_lines(output: str) -> list[dict]:
    return [json.loads(line) for line in lines(output)]


def blob_path(app, sha256: str) -> str:
    return app.extensions["vimeo_storage"].blob_path(sha256)


# -- files list / show -------------------------------------------------------------------

def test_files_list_filters_by_status_and_prints_json_lines(app, client, runner):
    kept = upload(client, b"kept", "kept.txt", max_downloads=0)
    used = upload(client, b"used", "used.txt")
    assert client.get(API + "/file/" + used["filehash"]).status_code == 200

    everything = runner.invoke(args=["files", "list", "--json"])
    assert everything.exit_code == 0, everything.output
    rows = json_lines(everything.stdout)
    assert [r["filehash"] for r in rows] == [kept["filehash"], used["filehash"]]
    assert all("owner_token" not in r and "password_hash" not in r for r in rows)

    available = json_lines(runner.invoke(args=["files", "list", "--status", "available", "--json"]).stdout)
    gone = json_lines(runner.invoke(args=["files", "list", "--status", "gone", "--json"]).stdout)
    assert [r["filehash"] for r in available] == [kept["filehash"]]
    assert [(r["filehash"], r["gone_reason"]) for r in gone] == [(used["filehash"], "downloaded")]

    table = runner.invoke(args=["files", "list"])
    assert table.exit_code == 0
    assert len(lines(table.stdout)) == 2
    assert kept["filehash"] in table.stdout and "kept.txt" in table.stdout
    assert "2 file(s)" in table.stderr


def test_files_list_rejects_an_unknown_status(runner):
    result = runner.invoke(args=["files", "list", "--status", "weird"])
    assert result.exit_code == 2
    assert "weird" in result.output


def test_files_show_describes_one_file(app, client, runner):
    file = upload(client, b"show me", "show.txt", password="s3cret", max_downloads=3)
    result = runner.invoke(args=["files", "show", file["filehash"], "--json"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert shown["filehash"] == file["filehash"]
    assert shown["sha256"] == file["sha256"]
    assert shown["password_protected"] is True
    assert shown["max_downloads"] == 3 and shown["downloads"] == 0
    assert shown["stored"] is True and shown["versions"] == 0
    assert "s3cret" not in result.output and "password_hash" not in shown

    plain = runner.invoke(args=["files", "show", file["filehash"]])
    assert plain.exit_code == 0
    assert f"filehash: {file['filehash']}" in plain.stdout


def test_files_show_of_an_unknown_file_fails_with_one_line(runner):
    result = runner.invoke(args=["files", "show", "0" * 32])
    assert result.exit_code == 1
    assert lines(result.output) == [f"Error: no file with filehash {'0' * 32}"]


# -- files delete / expire ---------------------------------------------------------------

def test_files_delete_makes_the_url_gone_and_a_second_delete_fails(app, client, runner):
    file = upload(client, b"delete me", "d.txt", max_downloads=0)
    result = runner.invoke(args=["files", "delete", file["filehash"]])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"file {file['filehash']} deleted"
    assert client.get(API + "/file/" + file["filehash"]).status_code == 410
    shown = json.loads(runner.invoke(args=["files", "show", file["filehash"], "--json"]).stdout)
    assert (shown["status"], shown["gone_reason"]) == ("gone", "deleted")

    again = runner.invoke(args=["files", "delete", file["filehash"]])
    assert again.exit_code == 1
    assert lines(again.output) == [f"Error: file {file['filehash']} is already gone (deleted)"]


def test_files_delete_of_an_unknown_file_fails(runner):
    result = runner.invoke(args=["files", "delete", "f" * 32])
    assert result.exit_code == 1
    assert "no file with filehash" in result.output


def test_files_expire_marks_the_file_expired(app, client, runner):
    file = upload(client, b"expire me", "e.txt", max_downloads=0)
    result = runner.invoke(args=["files", "expire", file["filehash"]])
    assert result.exit_code == 0, result.output
    assert client.get(API + "/file/" + file["filehash"]).status_code == 410
    shown = json.loads(runner.invoke(args=["files", "show", file["filehash"], "--json"]).stdout)
    assert (shown["status"], shown["gone_reason"]) == ("gone", "expired")
    assert runner.invoke(args=["files", "expire", file["filehash"]]).exit_code == 1


# -- files verify ------------------------------------------------------------------------

def test_verify_of_intact_storage_exits_zero_and_shows_a_progress_bar(app, client, runner):
    for i in range(3):
        upload(client, f"intact {i}".encode(), f"i{i}.txt", max_downloads=0)
    result = runner.invoke(args=["files", "verify"])
    assert result.exit_code == 0, result.output
    assert result.stdout == ""  # nothing to report
    assert "verifying" in result.stderr  # the progress bar's label
    assert "3 file(s) checked, 0 with missing or corrupt bytes" in result.stderr

    as_json = runner.invoke(args=["files", "verify", "--json"])
    assert as_json.exit_code == 0
    assert json.loads(as_json.stdout) == {"checked": 3, "problems": [], "repaired": []}


def test_corrupting_one_stored_file_makes_verify_report_exactly_that_file(app, client, runner):
    files = [upload(client, f"content number {i}".encode(), f"f{i}.txt", max_downloads=0) for i in range(4)]
    victim = files[2]
    path = blob_path(app, victim["sha256"])
    with open(path, "r+b") as blob:  # same size, other bytes
        blob.write(b"X")

    result = runner.invoke(args=["files", "verify", "--json"])
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["checked"] == 4
    assert [(p["filehash"], p["problem"]) for p in report["problems"]] == [(victim["filehash"], "corrupt")]
    assert report["repaired"] == []
    assert "1 file(s) with missing or corrupt bytes" in result.stderr

    text_mode = runner.invoke(args=["files", "verify"])
    assert text_mode.exit_code == 1
    assert lines(text_mode.stdout) == [l for l in lines(text_mode.stdout) if victim["filehash"] in l]
    assert len(lines(text_mode.stdout)) == 1 and text_mode.stdout.startswith("corrupt\t")


def test_verify_reports_missing_bytes_and_content_shared_by_two_files(app, client, runner):
    a = upload(client, b"shared content", "a.txt", max_downloads=0)
    b = upload(client, b"shared content", "b.txt", max_downloads=0)
    upload(client, b"other", "c.txt", max_downloads=0)
    assert a["sha256"] == b["sha256"]
    os.unlink(blob_path(app, a["sha256"]))

    report = json.loads(runner.invoke(args=["files", "verify", "--json"]).stdout)
    assert sorted((p["filehash"], p["problem"]) for p in report["problems"]) == sorted(
        [(a["filehash"], "missing"), (b["filehash"], "missing")]
    )


def test_verify_repair_marks_the_damaged_file_gone_and_removes_its_bytes(app, client, runner):
    good = upload(client, b"good bytes", "good.txt", max_downloads=0)
    bad = upload(client, b"bad bytes!", "bad.txt", max_downloads=0)
    path = blob_path(app, bad["sha256"])
    with open(path, "ab") as blob:  # longer than recorded
        blob.write(b"tail")

    result = runner.invoke(args=["files", "verify", "--repair", "--json"])
    assert result.exit_code == 1  # problems were found, even if repaired
    report = json.loads(result.stdout)
    assert report["repaired"] == [bad["filehash"]]
    assert client.get(API + "/file/" + bad["filehash"]).status_code == 410
    assert not os.path.exists(path)  # the next upload of the true content stores it afresh
    assert client.get(API + "/file/" + good["filehash"]).status_code == 200

    again = runner.invoke(args=["files", "verify", "--json"])
    assert again.exit_code == 0
    assert json.loads(again.stdout)["checked"] == 1

    fresh = upload(client, b"bad bytes!", "again.txt", max_downloads=0)
    assert client.get(API + "/file/" + fresh["filehash"]).get_data() == b"bad bytes!"


# -- files gc / sweep --------------------------------------------------------------------

def test_files_gc_runs_the_sweep(app, client, runner):
    due = upload(client, b"due", "due.txt", max_downloads=0)
    upload(client, b"fresh", "fresh.txt", max_downloads=0)
    with app.app_context():
        db.session.execute(
            text("UPDATE files SET expires_at = :t WHERE filehash = :h"),
            {"t": (utcnow() - timedelta(minutes=1)).replace(tzinfo=None), "h": due["filehash"]},
        )
        db.session.commit()

    result = runner.invoke(args=["files", "gc", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["expired"] == 1
    shown = json.loads(runner.invoke(args=["files", "show", due["filehash"], "--json"]).stdout)
    assert shown["gone_reason"] == "expired"

    plain = runner.invoke(args=["files", "gc"])
    assert plain.exit_code == 0
    assert "expired=0" in plain.stdout


# -- stats -------------------------------------------------------------------------------

def test_stats_prints_what_get_stats_answers(app, client, runner):
    a = upload(client, b"a" * 100, "a.bin")
    upload(client, b"b" * 50, "b.bin", max_downloads=0)
    assert client.get(API + "/file/" + a["filehash"]).status_code == 200

    result = runner.invoke(args=["stats", "--json"])
    assert result.exit_code == 0, result.output
    cli_stats = json.loads(result.stdout)
    token = operator_token(app, "stats:read")
    http_stats = client.get(API + "/stats", headers={"Authorization": f"Bearer {token}"}).get_json()
    assert cli_stats == http_stats
    assert cli_stats["files"] == {"available": {"files": 1, "bytes": 50}, "gone": {"files": 1, "bytes": 100}}
    assert cli_stats["downloads"] == 1

    plain = runner.invoke(args=["stats"])
    assert plain.exit_code == 0
    assert "files available: 1 (50 bytes)" in plain.stdout
    assert "downloads: 1" in plain.stdout


# -- cache clear -------------------------------------------------------------------------

def test_cache_clear_empties_the_cache_and_reaches_other_processes(app, client, runner):
    from vimeo_api.extensions import cache

    file = upload(client, b"cached", "c.txt", max_downloads=0)
    url = API + "/file/" + file["filehash"]
    client.head(url)
    assert client.head(url).headers.get("X-Cache") == "HIT"
    with app.app_context():
        cache.set("probe", "value")
    # The embedded default's workers each hold their own in-process cache: what reaches
    # them is the shared epoch file beside the storage directory.
    epoch_file = app.extensions["vimeo_metacache"].shared_epoch_file
    before = open(epoch_file).read() if os.path.exists(epoch_file) else None

    result = runner.invoke(args=["cache", "clear"])
    assert result.exit_code == 0, result.output
    assert "cache cleared (SimpleCache)" in result.stdout
    with app.app_context():
        assert cache.get("probe") is None
    assert open(epoch_file).read() != before
    assert client.head(url).headers.get("X-Cache") != "HIT"


def test_cache_clear_on_redis_and_a_one_line_failure_when_redis_is_down(make_app, private_redis):
    from vimeo_api.extensions import cache

    app = make_app(backend="sqlite", CACHE_TYPE="RedisCache", CACHE_REDIS_URL=private_redis.url())
    runner = app.test_cli_runner()
    import redis

    others = redis.Redis.from_url(private_redis.url())
    others.set("not-ours", "kept")  # a key outside CACHE_KEY_PREFIX: clear must not flush it
    with app.app_context():
        cache.set("probe", "value")
        assert cache.get("probe") == "value"
    result = runner.invoke(args=["cache", "clear"])
    assert result.exit_code == 0, result.output
    assert "RedisCache" in result.stdout
    with app.app_context():
        assert cache.get("probe") is None
    assert others.get("not-ours") == b"kept"
    others.close()

    private_redis.stop()
    down = runner.invoke(args=["cache", "clear"])
    assert down.exit_code == 1
    assert len(lines(down.output)) == 1
    assert down.output.startswith("Error: could not clear the cache: ConnectionError")
