"""Outages of the broker and of the database, with real processes on both sides.

Redis (the broker) down: downloads and uploads still work, each enqueue gives up within
BROKER_TIMEOUT and logs a warning, the intents stay in the database, and when Redis
returns (empty: it keeps nothing across a restart) beat's sweep finishes them.

PostgreSQL down: the API answers 503 JSON with Retry-After; when it is back the very
next requests succeed, with no restart of gunicorn (pool_pre_ping) nor of the worker.
"""

from __future__ import annotations

import os
import time

import pytest

from support.polling import wait_until
from support.services import PrivatePostgres
from support.stacks import dump
from support.uploads import upload

GRACE = 2
SWEEP_INTERVAL = 2
RETRY_AFTER = 2  # BROKER_RETRY_AFTER: how long the web app leaves a failed broker alone


def test_broker_down_downloads_succeed_and_pending_deletions_complete_when_it_returns(stack_factory):
    stack = stack_factory(
        "broker-outage", delete_grace_seconds=GRACE, sweep_interval=SWEEP_INTERVAL, broker_retry_after=RETRY_AFTER,
        resume_window=0,
    )
    stack.start_web(workers=2, threads=4)
    worker = stack.start_worker()
    beat = stack.start_beat()
    wait_until(lambda: "Sending due task sweep" in beat.log(), SWEEP_INTERVAL + 10, "beat never sent a sweep")
    contents = [os.urandom(4_000 + i) for i in range(4)]
    created = [upload(stack, content) for content in contents]

    stack.redis.stop()
    outage_started = time.monotonic()

    for item, content in zip(created, contents):
        started = time.monotonic()
        answer = stack.http.get(item["url"], timeout=30)
        assert answer.status_code == 200 and answer.content == content
        # One bounded attempt (BROKER_TIMEOUT = 1 s, one quick retry), never a hang.
        assert time.monotonic() - started < 5
    # Uploads work too, and so does their own deletion's intent.
    late_content = os.urandom(3_000)
    late = upload(stack, late_content)
    assert stack.http.get(late["url"], timeout=30).content == late_content
    created.append(late)
    contents.append(late_content)
    assert "could not queue the release of a blob, the sweep will" in stack.web.log()

    # The outage outlasts the grace period and several of beat's ticks (a deliberate
    # wait: its length is the point). Nothing can be deleted meanwhile, nothing is lost:
    # every intent is in the database, every byte still on disk.
    time.sleep(max(0.0, GRACE + 2 * SWEEP_INTERVAL - (time.monotonic() - outage_started)))
    for item, content in zip(created, contents):
        refcount, release_after = stack.blob_row(item["sha256"])
        assert refcount == 0 and release_after is not None
        assert stack.blob_path(item["sha256"]).read_bytes() == content
        assert stack.http.get(item["url"], timeout=30).status_code == 410
    assert worker.alive() and beat.alive()

    stack.redis.start()  # on the same port, with none of the messages it had

    wait_until(
        lambda: all(stack.bytes_released(item["sha256"]) for item in created),
        40,
        "pending deletions were not completed after the broker came back\n" + dump(stack),
        interval=0.5,
    )
    assert worker.alive() and beat.alive()

    # Once its back-off is over the web app queues releases again: the worker's task,
    # not only the sweep, removes a new file's bytes.
    time.sleep(RETRY_AFTER)
    fresh = upload(stack, b"after the outage")
    assert stack.http.get(fresh["url"], timeout=10).status_code == 200
    wait_until(
        lambda: stack.task_lines(worker, "release_blob_task", "received"),
        10,
        "the web app did not queue a release after the outage\n" + dump(stack),
    )
    wait_until(lambda: stack.bytes_released(fresh["sha256"]), GRACE + 10, "no deletion after the outage")


@pytest.fixture
def own_postgres():
    """A PostgreSQL cluster for one test, which it stops and starts."""
    pg = PrivatePostgres()
    pg.start()
    yield pg
    pg.destroy()


def test_database_down_answers_503_json_and_recovers_without_a_restart(stack_factory, own_postgres):
    stack = stack_factory("database-outage", pg=own_postgres, delete_grace_seconds=GRACE, sweep_interval=60,
                          resume_window=0)
    web = stack.start_web(workers=2, threads=4)
    worker = stack.start_worker()
    content = os.urandom(6_000)
    unlimited = upload(stack, content, max_downloads=0)
    one_time = upload(stack, os.urandom(2_000))
    for _ in range(8):  # every gunicorn worker now holds pooled connections
        assert stack.http.get(unlimited["url"], timeout=10).status_code == 200
    # Its deletion is queued now and falls due while the database is down.
    assert stack.http.get(one_time["url"], timeout=10).status_code == 200

    own_postgres.stop()
    try:
        # Requests that need the database: a download (its use is counted by an UPDATE)
        # and an upload. (HEAD and 304 may be answered from the metadata cache in Redis.)
        for method, url, kwargs in (
            ("GET", unlimited["url"], {}),
            ("PUT", stack.api + "/file", {"files": {"file": ("x.bin", b"during the outage")}}),
        ):
            started = time.monotonic()
            answer = stack.http.request(method, url, timeout=30, **kwargs)
            assert time.monotonic() - started < 10
            assert answer.status_code == 503, answer.text
            assert answer.headers["Content-Type"] == "application/json"
            assert int(answer.headers["Retry-After"]) > 0
            body = answer.json()
            assert body["error"] == "Service Unavailable"
            assert body["message"] and body["request_id"]
            assert "Traceback" not in answer.text and "psycopg2" not in answer.text
        time.sleep(GRACE + 1)  # the queued release runs, and fails, meanwhile
    finally:
        own_postgres.start()

    # The very next requests succeed: same gunicorn process, pooled connections renewed.
    for _ in range(8):
        answer = stack.http.get(unlimited["url"], timeout=10)
        assert answer.status_code == 200 and answer.content == content

    # A restart nobody noticed (no request during it): every pooled connection is dead,
    # and pool_pre_ping replaces each before use, so not even the first request fails.
    own_postgres.stop()
    own_postgres.start()
    for _ in range(8):
        answer = stack.http.get(unlimited["url"], timeout=10)
        assert answer.status_code == 200, answer.text
    assert web.alive() and web.log().count("Booting worker") == 2, "gunicorn restarted a worker"
    # The worker recovers by itself too: its retried task completes the deletion.
    wait_until(
        lambda: stack.bytes_released(one_time["sha256"]), 40, "the deletion was lost in the outage\n" + dump(stack)
    )
    assert worker.alive()
    # A cut-off upload during the outage left no temporary file behind.
    assert list((stack.storage_dir / "tmp").iterdir()) == []
