"""files.py: the domain layer, on SQLite and PostgreSQL.

What the HTTP tests cannot see directly: the rows and blob reference counts behind each
state change, the once-only transitions, and the release of bytes after the grace period.
"""

from __future__ import annotations

import hashlib
import os
import threading
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import select, text

from vimeo_api import blobs, files, security, storage
from vimeo_api.extensions import db
from vimeo_api.files import Options
from vimeo_api.request_options import parse_expires_in, parse_max_downloads
from vimeo_api.models import Blob, File

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=timezone.utc)


@pytest.fixture
def ctx(app):
    with app.app_context():
        yield app


def new_file(content: bytes = b"content", **options) -> tuple[File, str]:
    upload = storage.current().new_upload()
    upload.write(content)
    return files.create(upload, "f.txt", "text/plain", Options(**options))


def sha(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def blob(sha256: str) -> Blob | None:
    db.session.expire_all()
    found = db.session.get(Blob, sha256)
    db.session.rollback()
    return found


def fresh(file: File) -> File:
    db.session.expire_all()
    return db.session.get(File, file.id)


def stored(sha256: str) -> bool:
    return storage.current().exists(sha256)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


# -- create ----------------------------------------------------------------------------

def test_create_stores_bytes_then_row(ctx):
    before = utcnow().replace(microsecond=0)
    file, token = new_file(b"hello", password="pw", max_downloads=2)
    assert len(file.filehash) == 32 and int(file.filehash, 16) >= 0
    assert (file.size, file.sha256, file.max_downloads, file.downloads) == (5, sha(b"hello"), 2, 0)
    assert file.status == "available"
    assert file.created_at == file.modified_at
    assert file.modified_at.microsecond == 0 and file.modified_at >= before
    assert file.expires_at == file.created_at + timedelta(days=7)
    assert file.password_hash != "pw" and security.password_matches("pw", file.password_hash)
    assert file.owner_token_hash == security.hash_token(token) != token
    assert blob(file.sha256).refcount == 1
    assert os.stat(storage.current().blob_path(file.sha256)).st_mtime == file.modified_at.timestamp()
    assert os.listdir(storage.current().tmp_dir) == []


def test_create_defaults(ctx):
    file, _ = new_file()
    assert (file.max_downloads, file.password_hash) == (1, None)


def test_create_never_expires(ctx):
    file, _ = new_file(expires_at=None)
    assert fresh(file).expires_at is None


def test_same_content_is_stored_once_and_counted(ctx):
    first, _ = new_file(b"shared")
    second, _ = new_file(b"shared")
    assert first.sha256 == second.sha256
    assert blob(first.sha256).refcount == 2
    assert list(storage.current().iter_blobs()) == [first.sha256]


def test_find(ctx):
    file, _ = new_file()
    assert files.find(file.filehash).id == file.id
    assert files.find("0" * 32) is None


# -- consume_download ------------------------------------------------------------------

def test_last_download_makes_the_file_gone_and_releases_its_blob(ctx):
    file, _ = new_file(b"once")
    before = utcnow()
    assert files.consume_download(file.id, file.size, file.sha256, file.access_version) is True
    row = fresh(file)
    assert (row.downloads, row.status, row.gone_reason) == (1, "gone", "downloaded")
    assert row.gone_at >= before.replace(microsecond=0)
    released = blob(file.sha256)
    assert released.refcount == 0
    # Bytes of a used-up file stay for the resume window (RESUME_WINDOW, 900 s by default,
    # longer than the grace period) so that its transfer can be resumed.
    assert before + timedelta(seconds=899) <= released.release_after <= utcnow() + timedelta(seconds=900)
    assert stored(file.sha256)
    # Nothing left to consume.
    assert files.consume_download(file.id, file.size, file.sha256, file.access_version) is False
    assert fresh(file).downloads == 1
    assert blob(file.sha256).refcount == 0


def test_without_a_resume_window_a_used_up_file_keeps_its_bytes_for_the_grace_period(make_app, backend):
    app = make_app(RESUME_WINDOW=0)
    with app.app_context():
        file, _ = new_file(b"once, no resuming")
        before = utcnow()
        assert files.consume_download(file.id, file.size, file.sha256, file.access_version) is True
        # Bytes stay for the grace period (DELETE_GRACE_SECONDS, 30 s by default).
        released = blob(file.sha256)
        assert before + timedelta(seconds=29) <= released.release_after <= utcnow() + timedelta(seconds=30)


def test_downloads_count_up_to_the_limit(ctx):
    file, _ = new_file(max_downloads=3)
    for expected in (1, 2):
        assert files.consume_download(file.id, file.size, file.sha256, file.access_version) is True
        row = fresh(file)
        assert (row.downloads, row.status, row.gone_reason) == (expected, "available", None)
        assert blob(file.sha256).refcount == 1
    assert files.consume_download(file.id, file.size, file.sha256, file.access_version) is True
    assert (fresh(file).downloads, fresh(file).status) == (3, "gone")
    assert files.consume_download(file.id, file.size, file.sha256, file.access_version) is False


def test_unlimited_never_runs_out(ctx):
    file, _ = new_file(max_downloads=0)
    for _ in range(5):
        assert files.consume_download(file.id, file.size, file.sha256, file.access_version) is True
    row = fresh(file)
    assert (row.downloads, row.status) == (5, "available")
    assert (blob(file.sha256).refcount, blob(file.sha256).release_after) == (1, None)


def test_no_download_after_expiry(ctx):
    file, _ = new_file(max_downloads=0)
    db.session.execute(
        text("update files set expires_at = :t where id = :i"),
        {"t": datetime(2000, 1, 1), "i": file.id},
    )
    db.session.commit()
    assert files.consume_download(file.id, file.size, file.sha256, file.access_version) is False
    assert fresh(file).downloads == 0


def test_no_download_of_a_deleted_file(ctx):
    file, _ = new_file(max_downloads=0)
    assert files.mark_gone(file.id, "deleted") is True
    assert files.consume_download(file.id, file.size, file.sha256, file.access_version) is False
    assert fresh(file).downloads == 0


def test_used_up_file_keeps_shared_content_for_the_other(ctx):
    first, _ = new_file(b"shared")
    second, _ = new_file(b"shared", max_downloads=0)
    assert files.consume_download(first.id, first.size, first.sha256, first.access_version) is True
    assert fresh(first).status == "gone"
    assert (blob(first.sha256).refcount, blob(first.sha256).release_after) == (1, None)
    assert files.consume_download(second.id, second.size, second.sha256, second.access_version) is True


def test_concurrent_downloads_cannot_over_consume(ctx):
    file, _ = new_file(max_downloads=3)
    app = ctx
    results = []
    barrier = threading.Barrier(12)

    def worker():
        with app.app_context():
            barrier.wait()
            try:
                results.append(files.consume_download(file.id, file.size, file.sha256, file.access_version))
            finally:
                db.session.remove()

    threads = [threading.Thread(target=worker) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(results) == [False] * 9 + [True] * 3
    row = fresh(file)
    assert (row.downloads, row.status) == (3, "gone")
    assert blob(file.sha256).refcount == 0


# -- mark_gone -------------------------------------------------------------------------

def test_mark_gone_happens_once(ctx):
    file, _ = new_file(max_downloads=0)
    assert files.mark_gone(file.id, "deleted") is True
    assert files.mark_gone(file.id, "expired") is False
    row = fresh(file)
    assert (row.status, row.gone_reason) == ("gone", "deleted")
    assert blob(file.sha256).refcount == 0  # released once, not twice


def test_mark_gone_of_a_used_up_file_is_false(ctx):
    file, _ = new_file()
    files.consume_download(file.id, file.size, file.sha256, file.access_version)
    assert files.mark_gone(file.id, "deleted") is False
    assert fresh(file).gone_reason == "downloaded"
    assert blob(file.sha256).refcount == 0


def test_expire_due_marks_expired_files_gone(ctx):
    expired, _ = new_file(b"a", max_downloads=0)
    alive, _ = new_file(b"b", max_downloads=0)
    forever, _ = new_file(b"c", expires_at=None)
    db.session.execute(text("update files set expires_at = :t where id = :i"), {"t": datetime(2000, 1, 1), "i": expired.id})
    db.session.commit()
    assert files.expire_due(batch_size=10) == 1
    assert (fresh(expired).status, fresh(expired).gone_reason) == ("gone", "expired")
    assert fresh(alive).status == fresh(forever).status == "available"
    assert files.expire_due(batch_size=10) == 0


# -- release_blob ----------------------------------------------------------------------

def test_release_waits_for_the_grace_period(ctx):
    file, _ = new_file(b"graceful")
    files.mark_gone(file.id, "deleted")
    assert blobs.release(file.sha256) is False
    assert stored(file.sha256) and blob(file.sha256) is not None
    db.session.execute(text("update blobs set release_after = :t where sha256 = :s"), {"t": datetime(2000, 1, 1), "s": file.sha256})
    db.session.commit()
    assert blobs.release(file.sha256) is True
    assert not stored(file.sha256)
    assert blob(file.sha256) is None
    assert blobs.release(file.sha256) is False  # idempotent


def test_release_never_takes_content_in_use(ctx):
    file, _ = new_file(b"in use", max_downloads=0)
    db.session.execute(text("update blobs set release_after = :t where sha256 = :s"), {"t": datetime(2000, 1, 1), "s": file.sha256})
    db.session.commit()
    assert blobs.release(file.sha256) is False
    assert stored(file.sha256)


@pytest.fixture
def no_grace(make_app, backend):
    app = make_app(DELETE_GRACE_SECONDS=0, RESUME_WINDOW=0)
    with app.app_context():
        yield app


def test_without_grace_bytes_go_with_the_last_user(no_grace):
    first, _ = new_file(b"twice")
    second, _ = new_file(b"twice")
    assert files.mark_gone(first.id, "deleted") is True
    # One user left: the release task ran (eagerly) and kept the bytes.
    assert stored(first.sha256)
    assert blob(first.sha256).refcount == 1
    assert blobs.release(first.sha256) is False
    assert files.consume_download(second.id, second.size, second.sha256, second.access_version) is True
    # The last user is gone: the bytes and the blob row went at once.
    assert not stored(first.sha256)
    assert blob(first.sha256) is None


def test_reupload_during_grace_revives_the_blob(ctx):
    file, _ = new_file(b"again")
    files.mark_gone(file.id, "deleted")
    assert blob(file.sha256).release_after is not None
    again, _ = new_file(b"again")
    revived = blob(again.sha256)
    assert (revived.refcount, revived.release_after) == (1, None)
    assert blobs.release(again.sha256) is False
    assert stored(again.sha256)


# -- replace_content and update_options ------------------------------------------------

def test_replace_content(ctx):
    file, _ = new_file(b"old", max_downloads=0)
    old_modified = file.modified_at
    upload = storage.current().new_upload()
    upload.write(b"new content")
    replaced = files.replace_content(file, upload, "text/markdown")
    assert (replaced.sha256, replaced.size, replaced.content_type) == (sha(b"new content"), 11, "text/markdown")
    assert replaced.modified_at >= old_modified + timedelta(seconds=1)
    assert blob(sha(b"old")).refcount == 0
    assert blob(sha(b"new content")).refcount == 1
    assert stored(sha(b"new content"))


def test_replace_with_the_same_content_keeps_one_reference(ctx):
    file, _ = new_file(b"same", max_downloads=0)
    upload = storage.current().new_upload()
    upload.write(b"same")
    replaced = files.replace_content(file, upload, None)
    assert replaced.content_type == "text/plain"
    assert blob(file.sha256).refcount == 1
    assert blob(file.sha256).release_after is None


def test_replace_content_of_a_gone_file_is_none(ctx):
    file, _ = new_file(b"old")
    files.mark_gone(file.id, "deleted")
    upload = storage.current().new_upload()
    upload.write(b"new")
    assert files.replace_content(file, upload, None) is None
    assert fresh(file).sha256 == sha(b"old")
    assert blob(sha(b"new")) is None


@pytest.mark.parametrize("backend", ["postgresql"])
def test_replace_takes_the_file_row_before_blob_rows(ctx):
    """A sweep batch (or a deletion) holds a file's row and then takes a blob's row.
    A replacement of that file with that blob's content must wait for the file's row
    first: taking the blob's row first made a lock cycle, and PostgreSQL aborted one."""
    file, _ = new_file(b"old", max_downloads=0)
    new_file(b"popular")  # the replacement's content already has a blob row
    held, errors = threading.Event(), []
    engine = db.engine

    def sweep_like():
        with engine.connect() as conn:
            try:
                conn.execute(text("select id from files where id = :id for update"), {"id": file.id})
                held.set()
                threading.Event().wait(0.8)  # the replacement is waiting meanwhile
                conn.execute(text("update blobs set refcount = refcount where sha256 = :s"), {"s": sha(b"popular")})
                conn.commit()
            except Exception as exc:  # a deadlock abort lands here or in the replacement
                errors.append(exc)

    other = threading.Thread(target=sweep_like)
    other.start()
    assert held.wait(5)
    upload = storage.current().new_upload()
    upload.write(b"popular")
    replaced = files.replace_content(file, upload, None)
    other.join()
    assert errors == []
    assert replaced.sha256 == sha(b"popular")
    assert blob(sha(b"popular")).refcount == 2


def test_update_options(ctx):
    file, _ = new_file(max_downloads=0)
    updated = files.update_options(file, Options(password="pw", max_downloads=5, expires_at=None))
    row = fresh(updated)
    assert row.max_downloads == 5 and row.expires_at is None
    assert security.password_matches("pw", row.password_hash)
    files.update_options(row, Options(password=None))
    assert fresh(file).password_hash is None
    assert fresh(file).max_downloads == 5  # UNSET leaves it


def test_update_options_lowering_the_limit_to_the_used_count_makes_it_gone(ctx):
    file, _ = new_file(max_downloads=0)
    files.consume_download(file.id, file.size, file.sha256, file.access_version)
    files.consume_download(file.id, file.size, file.sha256, file.access_version)
    updated = files.update_options(fresh(file), Options(max_downloads=2))
    assert (updated.status, updated.gone_reason) == ("gone", "downloaded")
    assert blob(file.sha256).refcount == 0


# -- option parsing --------------------------------------------------------------------

@pytest.mark.parametrize(
    "value, seconds",
    [("1", 1), ("90", 90), (90, 90), ("90s", 90), ("2m", 120), ("1h", 3600), ("1d", 86400), (" 7D ", 7 * 86400), ("010", 10)],
)
def test_parse_expires_in(make_app, value, seconds):
    with make_app().app_context():
        assert parse_expires_in(value, NOW) == NOW + timedelta(seconds=seconds)


def test_parse_expires_in_never(make_app):
    with make_app(MAX_EXPIRES_IN=None).app_context():  # the default cap lifted
        assert parse_expires_in("never", NOW) is None
        assert parse_expires_in("NEVER", NOW) is None


@pytest.mark.parametrize("value", ["", "abc", "-1", "0", "0m", "1.5", "1w", "m", "1 h", "1hh", "+5", "1e3", "9" * 13, "36501d"])
def test_parse_expires_in_rejects(make_app, value):
    with make_app().app_context():
        with pytest.raises(ValueError, match="expires_in"):
            parse_expires_in(value, NOW)


def test_parse_expires_in_respects_the_configured_maximum(make_app):
    with make_app(MAX_EXPIRES_IN=3600).app_context():
        assert parse_expires_in("1h", NOW) == NOW + timedelta(hours=1)
        with pytest.raises(ValueError, match="maximum of 3600"):
            parse_expires_in("3601", NOW)
        with pytest.raises(ValueError, match="never"):
            parse_expires_in("never", NOW)


@pytest.mark.parametrize("value, expected", [("0", 0), ("1", 1), (" 3 ", 3), (7, 7), ("999999999", 999999999)])
def test_parse_max_downloads(value, expected):
    assert parse_max_downloads(value) == expected


@pytest.mark.parametrize("value", ["", "-1", "1.0", "abc", "1e3", "1000000000", True, None])
def test_parse_max_downloads_rejects(value):
    with pytest.raises(ValueError, match="max_downloads"):
        parse_max_downloads(value)


def test_whole_second():
    assert files.whole_second(datetime(2026, 1, 1, 0, 0, 0, 999999, tzinfo=timezone.utc)).microsecond == 0


def test_rows_are_readable_with_select(ctx):
    file, _ = new_file()
    assert db.session.execute(select(File.filehash).where(File.id == file.id)).scalar_one() == file.filehash


@pytest.mark.parametrize("value", ["٣", "²", True, 1.5, "3.0"])
def test_max_downloads_takes_ascii_whole_numbers_only(value):
    with pytest.raises(ValueError, match="max_downloads must be an integer"):
        parse_max_downloads(value)


def test_an_integral_json_number_is_a_whole_number():
    assert parse_max_downloads(5.0) == 5


# -- 64-bit counters (issue 13, item 10) ------------------------------------------------

def test_downloads_count_past_32_bits(ctx):
    """``downloads`` was a 32-bit integer on PostgreSQL: the 2,147,483,648th download of a
    public file failed the UPDATE (a 500)."""
    file, _ = new_file(max_downloads=0)
    db.session.execute(text("update files set downloads = 2147483647 where id = :i"), {"i": file.id})
    db.session.commit()
    assert files.consume_download(file.id, file.size, file.sha256, file.access_version) is True
    assert fresh(file).downloads == 2**31


@pytest.mark.parametrize("expires_in, seconds", [("2h", 7200), ("90", 90)])
def test_an_expiry_counts_from_the_files_own_creation_instant(ctx, monkeypatch, expires_in, seconds):
    # The options are read at 11:59:59.999 and the file made at 12:00:00.001 (a slow
    # body, a busy machine): expires_at is still created_at + expires_in, exactly.
    from vimeo_api import request_options

    monkeypatch.setattr(request_options, "utcnow", lambda: NOW - timedelta(milliseconds=1))
    options = request_options.parse({"expires_in": expires_in})
    monkeypatch.setattr(files, "utcnow", lambda: NOW + timedelta(milliseconds=1))
    upload = storage.current().new_upload()
    upload.write(b"content")
    file, _ = files.create(upload, "f.txt", "text/plain", options)
    row = fresh(file)
    assert row.created_at == NOW and row.expires_at == NOW + timedelta(seconds=seconds)


def test_a_resumable_uploads_expiry_counts_from_its_files_creation(ctx, monkeypatch):
    # The same for a tus upload: its expiry is kept as seconds and applied when the file
    # is made at completion, whatever the clock did since its creation and its options.
    from vimeo_api import request_options, resumable

    monkeypatch.setattr(request_options, "utcnow", lambda: NOW - timedelta(milliseconds=1))
    options = request_options.parse({"expires_in": "2h"})
    monkeypatch.setattr(resumable, "utcnow", lambda: NOW + timedelta(milliseconds=1))
    assert resumable._relative_expiry(options, NOW + timedelta(milliseconds=1)) == 7200
    assert resumable._relative_expiry(request_options.parse({}), NOW) is None
