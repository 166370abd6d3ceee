"""Deletion by real workers: after the last download, after DELETE, at expiry, and only
when no other file still uses the same bytes.

One stack for the module: gunicorn, a Celery worker and Celery beat on a private Redis
and PostgreSQL. The grace period (2 s) is shorter than the sweep interval (3 s), as in
production (30 s and 60 s). Resuming is off (``RESUME_WINDOW=0``): it would keep a used-up
file's bytes for its window (tests/test_files.py checks that).
"""

from __future__ import annotations

import os
import time

import pytest

from support.polling import wait_until
from support.stacks import dump
from support.uploads import upload

GRACE = 2
SWEEP_INTERVAL = 3


@pytest.fixture(scope="module")
def stack(stack_factory):
    stack = stack_factory("deletion", delete_grace_seconds=GRACE, sweep_interval=SWEEP_INTERVAL,
                          resume_window=0)
    stack.start_web()
    stack.worker = stack.start_worker()
    stack.beat = stack.start_beat()
    return stack


def test_a_one_time_file_loses_its_bytes_within_the_grace_period_after_its_download(stack):
    content = os.urandom(10_000)
    created = upload(stack, content)
    sha = created["sha256"]
    assert stack.blob_path(sha).read_bytes() == content

    first = stack.http.get(created["url"], timeout=10)
    downloaded_at = time.monotonic()
    assert first.status_code == 200 and first.content == content
    assert stack.http.get(created["url"], timeout=10).status_code == 410
    # The intent is recorded with the download, and the bytes outlive it by the grace.
    refcount, release_after = stack.blob_row(sha)
    assert refcount == 0 and release_after is not None
    if time.monotonic() - downloaded_at < GRACE - 0.5:
        assert stack.blob_path(sha).exists(), "bytes removed before the grace period was over"

    wait_until(lambda: stack.bytes_released(sha), GRACE + 10, "bytes still stored\n" + dump(stack))
    assert stack.file_row(created["filehash"]) == ("gone", "downloaded")
    assert stack.http.get(created["url"], timeout=10).status_code == 410
    # The worker's task did it (beat's sweep is only the safety net).
    wait_until(
        lambda: stack.task_lines(stack.worker, "release_blob_task", "succeeded"),
        5,
        "no release_blob_task ran\n" + dump(stack),
    )


def test_delete_answers_202_then_410_and_the_bytes_go_within_the_grace_period(stack):
    content = os.urandom(5_000)
    created = upload(stack, content, max_downloads=0)
    sha = created["sha256"]

    answer = stack.http.delete(created["url"], headers={"X-Owner-Token": created["owner_token"]}, timeout=10)
    assert answer.status_code == 202
    assert answer.json() == {"status": "File Deletion Scheduled"}
    gone = stack.http.get(created["url"], timeout=10)
    assert gone.status_code == 410 and gone.json()["error"] == "Gone"

    wait_until(lambda: stack.bytes_released(sha), GRACE + 10, "bytes still stored\n" + dump(stack))
    assert stack.file_row(created["filehash"]) == ("gone", "deleted")


def test_an_expired_file_answers_410_at_once_and_loses_its_bytes_at_the_next_sweep(stack):
    content = os.urandom(3_000)
    created = upload(stack, content, max_downloads=0, expires_in="2s")
    sha = created["sha256"]
    assert stack.http.get(created["url"], timeout=10).status_code == 200

    # 410 from the instant of expiry, whether or not a sweep has run: no worker involved.
    # (A requests.Response is falsy when its status is an error: wrap it.)
    [answer] = wait_until(
        lambda: (r := stack.http.get(created["url"], timeout=10)).status_code != 200 and [r],
        10,
        "the file never expired",
        interval=0.05,
    )
    expired_at = time.monotonic()
    assert answer.status_code == 410 and answer.json()["error"] == "Gone"

    # The first sweep after expiry marks it gone (grace starts then); the next one after
    # the grace removes the bytes: at most two sweep intervals and the grace, plus slack.
    wait_until(
        lambda: stack.bytes_released(sha),
        2 * SWEEP_INTERVAL + GRACE + 6,
        "an expired file's bytes were not swept\n" + dump(stack),
    )
    assert time.monotonic() - expired_at >= GRACE - 0.5
    assert stack.file_row(created["filehash"]) == ("gone", "expired")
    assert any("'expired': 1" in line for line in stack.worker.log().splitlines()), dump(stack)


def test_bytes_shared_by_two_files_go_only_when_neither_uses_them(stack):
    content = os.urandom(8_000)
    one_time = upload(stack, content, "a.bin")
    kept = upload(stack, content, "b.bin", max_downloads=0)
    replaced = upload(stack, content, "c.bin", max_downloads=0)
    sha = one_time["sha256"]
    assert kept["sha256"] == sha == replaced["sha256"]
    assert stack.blob_row(sha).refcount == 3

    # Three ways of letting go of the content: used up, replaced by other bytes...
    assert stack.http.get(one_time["url"], timeout=10).content == content
    other = os.urandom(100)
    answer = stack.http.put(
        replaced["url"], data=other, headers={"X-Owner-Token": replaced["owner_token"]}, timeout=10
    )
    assert answer.status_code == 200, answer.text
    assert stack.blob_row(sha).refcount == 1

    # ... and, once the grace period and two whole sweeps have passed, nothing was removed.
    sweeps = len(stack.task_lines(stack.worker, "sweep_task", "succeeded"))
    time.sleep(GRACE)
    wait_until(
        lambda: len(stack.task_lines(stack.worker, "sweep_task", "succeeded")) >= sweeps + 2,
        3 * SWEEP_INTERVAL + 5,
        "beat's sweeps did not run\n" + dump(stack),
    )
    assert stack.blob_path(sha).read_bytes() == content
    assert stack.blob_row(sha).refcount == 1
    still = stack.http.get(kept["url"], timeout=10)
    assert still.status_code == 200 and still.content == content
    assert stack.http.get(replaced["url"], timeout=10).content == other

    # ... the third user lets go: now the bytes go.
    answer = stack.http.delete(kept["url"], headers={"X-Owner-Token": kept["owner_token"]}, timeout=10)
    assert answer.status_code == 202
    wait_until(lambda: stack.bytes_released(sha), GRACE + 10, "shared bytes still stored\n" + dump(stack))
    assert stack.http.get(replaced["url"], timeout=10).content == other
