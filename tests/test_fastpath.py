"""The app's side of nginx's fast path (vimeo_api/grants.py, vimeo_api/fastpath.py): which files get a grant,
what the grant subrequest answers, and that every change removes grants before it
answers. tests/stack/test_fastpath.py runs the same through real nginx."""

from __future__ import annotations

import os
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
from sqlalchemy import text

from support import API
from support.uploads import upload
from vimeo_api import grants as grant_store
from vimeo_api.extensions import db


@pytest.fixture
def app(make_app, backend):
    return make_app(DELIVERY="accel")


def grants(app) -> list[Path]:
    root = Path(app.config["STORAGE_DIR"], "grants")
    return sorted(p for p in root.rglob("*") if p.is_symlink())


def grant_answer(client, kind, ident):
    return client.get(f"/_vimeo/grant/{kind}/{ident[:2]}/{ident}")


def test_fast_path_follows_delivery(make_app):
    assert make_app(DELIVERY="accel").config["FAST_PATH"] is True
    embedded = make_app()
    assert embedded.config["FAST_PATH"] is False
    # The embedded default has no nginx and no grant route.
    assert embedded.test_client().get("/_vimeo/grant/f/ab/" + "ab" * 16).status_code == 404


def test_a_public_download_makes_a_grant_to_its_blob(app):
    client = app.test_client()
    up = upload(client, max_downloads="0")
    assert grants(app) == []  # made on a download, not at upload
    assert client.get(f"{API}/file/{up['filehash']}").status_code == 200
    [grant] = grants(app)
    assert grant.resolve() == Path(app.config["STORAGE_DIR"], "blobs", up["sha256"][:2], up["sha256"][2:4], up["sha256"])
    answer = grant_answer(client, "f", up["filehash"])
    assert answer.status_code == 200 and answer.data == b""
    assert Path(app.config["STORAGE_DIR"], "grants", answer.headers["X-Vimeo-Grant"]) == grant
    assert answer.headers["X-File-ETag"] == up["etag"]
    assert answer.headers["X-File-Cache-Control"] == "public, max-age=60, s-maxage=3600"
    assert answer.headers["X-File-Content-Type"].startswith("text/plain")
    assert "filename" in answer.headers["X-File-Content-Disposition"]
    until = int(answer.headers["X-Accel-Expires"].lstrip("@"))
    assert 0 <= until - time.time() <= grant_store.MAX_AGE + 1


def test_a_grant_answer_ends_a_second_before_the_file_expires(app, monkeypatch):
    monkeypatch.setattr(grant_store, "MAX_AGE", 3600)  # longer than the file lives
    client = app.test_client()
    up = upload(client, max_downloads="0", expires_in="60")
    client.get(f"{API}/file/{up['filehash']}")
    answer = grant_answer(client, "f", up["filehash"])
    assert answer.status_code == 200
    expires_at = datetime.strptime(up["expires_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    # nginx uses an entry through the whole second X-Accel-Expires names.
    assert answer.headers["X-Accel-Expires"] == f"@{int(expires_at.timestamp()) - 1}"


@pytest.mark.parametrize("fields", [
    {"max_downloads": "0", "password": "pw"},
    {"max_downloads": "3"},
    {},
    {"max_downloads": "0", "expires_in": "2"},
])
def test_files_whose_answer_is_not_shared_get_no_grant(app, fields):
    client = app.test_client()
    up = upload(client, **fields)
    headers = {"X-Password": "pw"} if "password" in fields else {}
    assert client.get(f"{API}/file/{up['filehash']}", headers=headers).status_code == 200
    assert grant_answer(client, "f", up["filehash"]).status_code == 403
    assert grants(app) == []


def test_empty_files_get_no_grant(app):
    client = app.test_client()
    up = upload(client, b"", max_downloads="0")
    client.get(f"{API}/file/{up['filehash']}")
    assert grant_answer(client, "f", up["filehash"]).status_code == 403


def test_unknown_or_malformed_resources_are_refused_with_403(app):
    client = app.test_client()
    for path in ("f/ab/" + "ab" * 16, "v/ab/" + "ab" * 16, "f/cd/" + "ab" * 16, "x/ab/" + "ab" * 16, "f/ab/AB"):
        # 403 sends nginx to the app; a 404 here would become nginx's 500.
        assert client.get("/_vimeo/grant/" + path).status_code == 403, path


def test_every_change_removes_the_grant_before_it_answers(app):
    client = app.test_client()
    up = upload(client, max_downloads="0")
    owner = {"X-Owner-Token": up["owner_token"]}
    url = f"{API}/file/{up['filehash']}"

    def granted():
        client.get(url)
        return [g.name for g in grants(app)]

    first = granted()
    assert len(first) == 1
    assert client.put(url, data=b"new bytes", headers=owner).status_code == 200
    assert grants(app) == []
    second = granted()
    assert len(second) == 1 and second != first  # a new state, a new digest
    assert client.patch(url, json={"expires_in": 3600}, headers=owner).status_code == 200
    assert grants(app) == []
    assert len(granted()) == 1
    assert client.patch(url, json={"password": "pw"}, headers=owner).status_code == 200
    assert grants(app) == []
    assert client.get(url, headers={"X-Password": "pw"}).status_code == 200
    assert grants(app) == []
    assert client.patch(url, json={"password": None}, headers=owner).status_code == 200
    assert len(granted()) == 1
    assert client.delete(url, headers=owner).status_code == 202
    assert grants(app) == []
    assert not any(Path(app.config["STORAGE_DIR"], "grants", "f").rglob(up["filehash"]))


def test_a_version_grant_goes_with_its_file(app):
    client = app.test_client()
    up = upload(client, max_downloads="0")
    owner = {"X-Owner-Token": up["owner_token"]}
    version = client.post(f"{API}/file/{up['filehash']}/versions", headers=owner).json
    assert client.get(f"{API}/v/{version['version_id']}").status_code == 200
    answer = grant_answer(client, "v", version["version_id"])
    assert answer.status_code == 200
    assert answer.headers["X-File-Cache-Control"] == "public, max-age=31536000, immutable"
    assert answer.headers["X-Vimeo-Grant"].startswith("v/")
    assert client.delete(f"{API}/file/{up['filehash']}", headers=owner).status_code == 202
    assert grants(app) == []
    assert grant_answer(client, "v", version["version_id"]).status_code == 403


def test_purge_and_cache_clear_remove_grants(app):
    client = app.test_client()
    up = upload(client, max_downloads="0")
    client.get(f"{API}/file/{up['filehash']}")
    assert len(grants(app)) == 1
    assert app.test_cli_runner().invoke(args=["cache", "clear"]).exit_code == 0
    assert grants(app) == []


def test_a_grant_made_from_stale_metadata_is_removed_again(app):
    """Create-then-verify: the symlink is checked against the database after it is made,
    so a state a writer changed meanwhile never keeps a grant."""
    client = app.test_client()
    up = upload(client, max_downloads="0")
    client.get(f"{API}/file/{up['filehash']}")  # makes the grant
    client.head(f"{API}/file/{up['filehash']}")  # caches the metadata (a plain GET reads the database)
    for grant in grants(app):
        os.unlink(grant)
    with app.app_context():
        # A writer's change the cache has not heard of (no invalidation).
        db.session.execute(text("update files set password_hash = 'x' where filehash = :h"), {"h": up["filehash"]})
        db.session.commit()
        with app.test_request_context():
            from vimeo_api import files, metacache

            stale = metacache.lookup(up["filehash"], files.find)
            assert stale.password_hash is None  # the cache still says public
            assert grant_store.ensure_file(stale) is None
    assert grants(app) == []


# -- counting what nginx served (fastcount.py) ------------------------------------------

def test_the_fast_path_log_is_counted_once_whole_lines_only_and_after_rotation(make_app, backend, tmp_path):
    from vimeo_api import fastcount

    log = tmp_path / "fast-downloads.log"
    app = make_app(DELIVERY="accel", FAST_PATH_LOG=str(log))
    client = app.test_client()
    a = upload(client, b"a" * 10, max_downloads="0")["filehash"]
    b = upload(client, b"b" * 20, max_downloads="0")["filehash"]

    def line(fh, nbytes):
        return f"/f/{fh[:2]}/{fh}/{'0' * 32} {nbytes}\n".encode()

    def counts():
        with app.app_context():
            rows = db.session.execute(text("select filehash, downloads, bytes_served from files")).all()
            return {r[0]: (r[1], r[2]) for r in rows}

    with app.app_context():
        assert fastcount.count_served() == 0  # no log yet
        log.write_bytes(line(a, 10) + line(a, 4) + b"garbage that is not a download\n" + line(b, 20) + line(a, 10)[:20])
        assert fastcount.count_served() == 3
        assert counts() == {a: (2, 14), b: (1, 20)}
        assert fastcount.count_served() == 0  # nothing new; the cut line waits for its end
        with open(log, "ab") as fh:
            fh.write(line(a, 10)[20:])
        assert fastcount.count_served() == 1
        assert counts()[a] == (3, 24)
        # Rotated: a new file (new inode) is read from its start.
        log.rename(tmp_path / "fast-downloads.log.1")
        log.write_bytes(line(b, 20))
        assert fastcount.count_served() == 1
        assert counts() == {a: (3, 24), b: (2, 40)}


def test_without_a_log_setting_nothing_is_counted(app):
    from vimeo_api import fastcount

    with app.app_context():
        assert app.config["FAST_PATH_LOG"] is None
        assert fastcount.count_served() == 0


def test_a_sweep_counts_the_log_and_publishes_the_count(make_app, tmp_path):
    from vimeo_api import sweep

    log = tmp_path / "fast-downloads.log"
    app = make_app(DELIVERY="accel", FAST_PATH_LOG=str(log))
    client = app.test_client()
    fh = upload(client, b"c" * 5, max_downloads="0")["filehash"]
    log.write_bytes(f"/f/{fh[:2]}/{fh}/{'1' * 32} 5\n".encode() * 3)
    with app.app_context():
        assert sweep.run(orphans=False).fast_downloads == 3
        assert sweep.run(orphans=False).fast_downloads == 0
    metrics = client.get("/metrics").get_data(as_text=True)
    assert "vimeo_fast_path_downloads_total 3.0" in metrics
    assert 'vimeo_sweep_backlog{kind="fast_downloads"}' not in metrics


def test_the_sweep_removes_grants_a_writer_left_behind(app):
    """A writer that died between its commit and removing the grants: the next sweep
    removes them, and leaves the grants that are still true."""
    from vimeo_api import sweep

    client = app.test_client()
    stale = upload(client, b"stale", max_downloads="0")
    kept = upload(client, b"kept", max_downloads="0")
    version = client.post(f"{API}/file/{kept['filehash']}/versions", headers={"X-Owner-Token": kept["owner_token"]}).json
    for path in (f"/file/{stale['filehash']}", f"/file/{kept['filehash']}", f"/v/{version['version_id']}"):
        assert client.get(API + path).status_code == 200
    assert len(grants(app)) == 3
    with app.app_context():
        # The change a crashed writer committed, its grant still in place.
        db.session.execute(text("update files set status = 'gone', gone_reason = 'deleted' where filehash = :h"),
                           {"h": stale["filehash"]})
        db.session.commit()
        assert sweep.run(orphans=False).stale_grants == 1
        assert sweep.run(orphans=False).stale_grants == 0
    left = grants(app)
    assert len(left) == 2 and not any(stale["filehash"] in str(g) for g in left)
    assert not Path(app.config["STORAGE_DIR"], "grants", "f", stale["filehash"][:2], stale["filehash"]).exists()
