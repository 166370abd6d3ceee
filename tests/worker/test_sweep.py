"""The sweep's batches and the enqueue's bounds, in-process on SQLite and PostgreSQL.

The end-to-end tests beside this file run real workers; these pin down what they rely
on: refcounts dropped by the right amounts in one batch, batches that skip rows another
transaction holds, releases that take only what is due, retries after a deadlock, and
an enqueue that gives up quickly and then leaves a dead broker alone.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import time
from datetime import datetime

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from vimeo_api import blobs, config, files, queue, storage, sweep
from vimeo_api.extensions import db
from vimeo_api.files import Options
from vimeo_api.models import Blob

LONG_AGO = datetime(2000, 1, 1)


@pytest.fixture
def ctx(app):
    with app.app_context():
        yield app


def new_file(content: bytes, **options):
    upload = storage.current().new_upload()
    upload.write(content)
    file, _token = files.create(upload, "f.bin", "application/octet-stream", Options(**options))
    return file


def expire_now(*file_list) -> None:
    db.session.execute(
        text("UPDATE files SET expires_at = :t WHERE id = :i"), [{"t": LONG_AGO, "i": f.id} for f in file_list]
    )
    db.session.commit()


def blob(sha256: str) -> Blob | None:
    db.session.expire_all()
    found = db.session.get(Blob, sha256)
    db.session.rollback()
    return found


def statuses() -> dict[int, tuple[str, str | None]]:
    rows = db.session.execute(text("SELECT id, status, gone_reason FROM files")).all()
    db.session.rollback()
    return {row.id: (row.status, row.gone_reason) for row in rows}


def test_expire_due_drops_each_blob_by_the_number_of_its_files(ctx):
    shared = [new_file(b"shared", max_downloads=0) for _ in range(3)]
    survivor = new_file(b"shared", max_downloads=0)
    alone = [new_file(f"alone {i}".encode(), max_downloads=0) for i in range(2)]
    expire_now(*shared, *alone)

    assert files.expire_due(batch_size=100) == 5
    assert files.expire_due(batch_size=100) == 0

    kept = blob(survivor.sha256)
    assert (kept.refcount, kept.release_after) == (1, None)
    for file in alone:
        released = blob(file.sha256)
        assert released.refcount == 0 and released.release_after is not None
    state = statuses()
    assert all(state[f.id] == ("gone", "expired") for f in shared + alone)
    assert state[survivor.id] == ("available", None)


def test_expire_due_works_in_batches_of_the_given_size(ctx):
    expire_now(*[new_file(f"f{i}".encode(), max_downloads=0) for i in range(7)])
    assert [files.expire_due(batch_size=3) for _ in range(4)] == [3, 3, 1, 0]


def test_release_due_blobs_takes_only_what_is_unused_and_past_its_grace(ctx):
    due = new_file(b"due")
    in_grace = new_file(b"in grace")
    in_use = new_file(b"in use", max_downloads=0)
    files.mark_gone(due.id, "deleted")
    files.mark_gone(in_grace.id, "deleted")
    db.session.execute(
        text("UPDATE blobs SET release_after = :t WHERE sha256 IN (:a, :b)"),
        {"t": LONG_AGO, "a": due.sha256, "b": in_use.sha256},
    )
    db.session.commit()

    assert blobs.release_due(batch_size=100) == 1
    assert blobs.release_due(batch_size=100) == 0
    assert blob(due.sha256) is None and not storage.current().exists(due.sha256)
    assert blob(in_grace.sha256) is not None and storage.current().exists(in_grace.sha256)
    assert blob(in_use.sha256).refcount == 1 and storage.current().exists(in_use.sha256)


@pytest.fixture
def no_grace(make_app, backend):
    app = make_app(DELETE_GRACE_SECONDS=0, STALE_UPLOAD_SECONDS=0)
    with app.app_context():
        yield app


def test_one_sweep_expires_releases_and_cleans_up(no_grace):
    expired = [new_file(f"x{i}".encode(), max_downloads=0) for i in range(5)]
    twin = new_file(b"x0", max_downloads=0)  # keeps the first one's bytes alive
    expire_now(*expired)
    store = storage.current()
    orphan = hashlib.sha256(b"orphan").hexdigest()
    os.makedirs(os.path.dirname(store.blob_path(orphan)), exist_ok=True)
    with open(store.blob_path(orphan), "wb") as f:
        f.write(b"orphan")
    leftover = store.new_upload()  # as a killed upload leaves it
    leftover.write(b"half an upload")
    leftover.flush()
    an_hour_ago = time.time() - 3600
    for path in (store.blob_path(orphan), leftover.path):
        os.utime(path, (an_hour_ago, an_hour_ago))

    report = sweep.run(batch_size=2)

    assert report.expired == 5
    assert report.orphans == 1 and not store.exists(orphan)
    assert report.released == 4 + 1  # the orphan is released like any unused blob
    assert report.stale_uploads == 1
    assert store.exists(twin.sha256) and blob(twin.sha256).refcount == 1
    for file in expired[1:]:
        assert blob(file.sha256) is None and not store.exists(file.sha256)
    assert sweep.run(batch_size=2).counts() == dict.fromkeys(report.counts(), 0)


def test_an_orphan_uploaded_again_before_its_release_is_kept(no_grace):
    store = storage.current()
    orphan = hashlib.sha256(b"came back").hexdigest()
    os.makedirs(os.path.dirname(store.blob_path(orphan)), exist_ok=True)
    with open(store.blob_path(orphan), "wb") as f:
        f.write(b"came back")
    os.utime(store.blob_path(orphan), (time.time() - 3600, time.time() - 3600))

    assert sweep.remove_orphans(batch_size=10, min_age=60) == 1
    assert blob(orphan).refcount == 0
    again = new_file(b"came back", max_downloads=0)  # finds the bytes in place
    assert blobs.release_due(batch_size=10) == 0
    assert blob(again.sha256).refcount == 1 and store.exists(orphan)
    assert sweep.remove_orphans(batch_size=10, min_age=60) == 0


class _FakeDriverError(Exception):
    def __init__(self, pgcode):
        super().__init__(pgcode)
        self.pgcode = pgcode


def test_drain_retries_a_batch_lost_to_a_deadlock_and_reraises_anything_else(ctx):
    outcomes = [OperationalError("UPDATE", {}, _FakeDriverError("40P01")), 5, 2, 0]

    def batch(_size):
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    assert sweep.drain(batch, 10) == 7

    def broken(_size):
        raise OperationalError("UPDATE", {}, _FakeDriverError("08006"))

    with pytest.raises(OperationalError):
        sweep.drain(broken, 10)


def test_a_batch_skips_rows_another_transaction_holds(make_app):
    """A download holding a row is not waited for: the row is left to the next batch."""
    app = make_app(backend="postgresql")
    with app.app_context():
        held = new_file(b"held", max_downloads=0)
        others = [new_file(f"o{i}".encode(), max_downloads=0) for i in range(3)]
        expire_now(held, *others)
        engine = create_engine(app.config["DATABASE_URL"])
        try:
            with engine.connect() as other:
                other.execute(text("SELECT id FROM files WHERE id = :i FOR UPDATE"), {"i": held.id})
                started = time.monotonic()
                assert files.expire_due(batch_size=10) == 3
                assert time.monotonic() - started < 2
                other.rollback()
        finally:
            engine.dispose()
        assert files.expire_due(batch_size=10) == 1
        assert blob(held.sha256).refcount == 0


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_enqueue_with_the_broker_down_is_bounded_logged_and_then_skipped(make_app, caplog):
    app = make_app(backend="sqlite", BROKER_URL=f"redis://127.0.0.1:{_closed_port()}/0", BROKER_RETRY_AFTER=30)
    with app.app_context(), caplog.at_level(logging.WARNING, logger="vimeo_api.queue"):
        started = time.monotonic()
        queue.queue_release("a" * 64)
        assert time.monotonic() - started < 5
        assert "could not queue the release of a blob, the sweep will" in caplog.text
        # The breaker is open: the next requests do not wait on the broker at all.
        started = time.monotonic()
        queue.queue_release("b" * 64)
        assert time.monotonic() - started < 0.1
        assert "left to the sweep" in caplog.text


def test_celery_settings_bound_every_wait_on_redis():
    settings = config.celery_settings(
        {**config.DEFAULTS, "BROKER_URL": "redis://127.0.0.1:6379/0", "DELETE_GRACE_SECONDS": 30}
    )
    options = settings["broker_transport_options"]
    # Longer than a task's countdown, or live workers would get duplicates.
    assert options["visibility_timeout"] == 330
    assert options["socket_timeout"] == options["socket_connect_timeout"] == 1
    assert options["max_retries"] == 1
    assert settings["task_publish_retry_policy"]["max_retries"] == 1
    assert settings["task_acks_late"] and settings["task_reject_on_worker_lost"]
    assert not settings["task_always_eager"]

    embedded = config.celery_settings(dict(config.DEFAULTS))
    assert embedded["task_always_eager"] and "broker_transport_options" not in embedded

    overridden = config.celery_settings(
        {**config.DEFAULTS, "BROKER_URL": "redis://x/0", "CELERY_OVERRIDES": {"worker_prefetch_multiplier": 4}}
    )
    assert overridden["worker_prefetch_multiplier"] == 4


# -- issue 13, item 10 ------------------------------------------------------------------------

def test_a_failing_step_does_not_stop_the_others(make_app, tmp_path, caplog):
    """Counting nginx's downloads fails (its log path is a directory): expiry, releases
    and the rest still run, and the failure is logged and reported."""
    unreadable = tmp_path / "a-directory"
    unreadable.mkdir()
    app = make_app(FAST_PATH=True, FAST_PATH_LOG=str(unreadable), DELETE_GRACE_SECONDS=0)
    with app.app_context():
        file = new_file(b"due")
        expire_now(file)
        with caplog.at_level(logging.ERROR, logger="vimeo_api.sweep"):
            report = sweep.run()
        assert report.failed == ["fast_downloads"]
        assert (report.expired, report.released) == (1, 1)
        assert statuses()[file.id] == ("gone", "expired")
        assert not storage.current().exists(file.sha256)
    assert any("fast_downloads" in r.getMessage() and r.exc_info for r in caplog.records)
    runner = app.test_cli_runner()
    result = runner.invoke(args=["files", "sweep", "--json"])
    assert result.exit_code == 1
    assert '"failed": ["fast_downloads"]' in result.output and "fast_downloads" in result.output.splitlines()[-1]


def test_files_used_up_by_late_counting_release_their_content(make_app, tmp_path):
    """A public file's downloads nginx answered are counted by the sweep; a limit set by
    PATCH meanwhile makes the file used up then: gone (downloaded), its blob released."""
    log = tmp_path / "fast-downloads.log"
    app = make_app(FAST_PATH=True, FAST_PATH_LOG=str(log), DELETE_GRACE_SECONDS=0)
    client = app.test_client()
    with app.app_context():
        file = new_file(b"counted late", max_downloads=0)
        kept = new_file(b"still within", max_downloads=0)
        file.max_downloads = 3  # a PATCH after the fast downloads, before they were counted
        kept.max_downloads = 10
        db.session.commit()
        filehash, kept_hash, sha = file.filehash, kept.filehash, file.sha256
    lines = [f"/f/{fh[:2]}/{fh}/{'d' * 32} 12\n" for fh in [filehash] * 5 + [kept_hash] * 2]
    log.write_text("".join(lines))
    with app.app_context():
        report = sweep.run()
        assert report.fast_downloads == 7 and report.failed == []
        rows = db.session.execute(text("SELECT filehash, downloads, status, gone_reason FROM files")).all()
        assert {r.filehash: tuple(r[1:]) for r in rows} == {
            filehash: (5, "gone", "downloaded"), kept_hash: (2, "available", None)}
        assert blob(sha) is None and not storage.current().exists(sha)  # released in the same sweep
    assert client.head(f"/vimeo/api/v1.0/file/{filehash}").status_code == 410


def test_nginx_body_files_left_by_a_crash_are_removed(make_app):
    app = make_app(STALE_UPLOAD_SECONDS=600)
    with app.app_context():
        body_dir = os.path.join(app.config["STORAGE_DIR"], "nginx-body")
        os.makedirs(body_dir)
        old, young = os.path.join(body_dir, "0000000001"), os.path.join(body_dir, "0000000002")
        for path in (old, young):
            with open(path, "wb") as fh:
                fh.write(b"a body nginx kept")
        os.utime(old, (time.time() - 3600, time.time() - 3600))
        report = sweep.run()
        assert report.stale_uploads == 1
        assert sorted(os.listdir(body_dir)) == ["0000000002"]
