"""A worker killed with SIGKILL inside a deletion: after a restart the deletion completes.

The worker runs with ``TEST_RELEASE_DELAY``, which makes ``release_blob_task`` wait
between deleting the blob's row and unlinking its bytes, so the kill lands inside the
deletion's transaction. No beat runs here: only the broker's redelivery of the
unacknowledged message (acks_late, Redis ``visibility_timeout``) can finish the job.
"""

from __future__ import annotations

import os

from support.polling import wait_until
from support.stacks import assert_no_errors, dump
from support.uploads import upload

GRACE = 1
VISIBILITY = 4  # seconds before Redis hands an unacknowledged message out again
PAUSE = 60  # far longer than the test: the worker is killed during it


def test_kill_9_inside_a_deletion_then_restart_completes_it_with_no_error_left(stack_factory):
    stack = stack_factory("crash", delete_grace_seconds=GRACE, broker_visibility_timeout=VISIBILITY,
                          resume_window=0)
    stack.start_web()
    doomed = stack.start_worker(test_release_delay=PAUSE)

    content = os.urandom(20_000)
    created = upload(stack, content)
    sha = created["sha256"]
    assert stack.http.get(created["url"], timeout=10).content == content

    # The worker is inside the deletion: the row's DELETE is executed, not committed.
    wait_until(
        lambda: f"inside the release of {sha}" in doomed.log(), GRACE + 15, "the release never started\n" + dump(stack)
    )
    inside = stack.sql(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND state = 'idle in transaction' AND query LIKE 'DELETE FROM blobs%'"
    )
    assert inside[0][0] == 1
    assert stack.blob_path(sha).exists()
    assert stack.broker_backlog()["unacked"] == 1

    doomed.kill9()

    # The transaction died with the worker; the message stayed with the broker.
    wait_until(
        lambda: stack.sql(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND state = 'idle in transaction'"
        )[0][0] == 0,
        10,
        "the killed worker's transaction is still open",
    )
    assert stack.blob_row(sha) is not None and stack.blob_row(sha).refcount == 0
    assert stack.blob_path(sha).read_bytes() == content
    assert stack.broker_backlog()["unacked"] == 1

    restarted = stack.start_worker()
    wait_until(
        lambda: stack.bytes_released(sha),
        VISIBILITY + GRACE + 10,
        "the deletion was not completed after the restart\n" + dump(stack),
    )

    # Done by the redelivered task, and nothing left behind anywhere.
    wait_until(
        lambda: stack.task_lines(restarted, "release_blob_task", "succeeded"), 5, "no task succeeded\n" + dump(stack)
    )
    wait_until(
        lambda: stack.broker_backlog() == {"queued": 0, "unacked": 0, "unacked_index": 0},
        5,
        f"messages left in Redis: {stack.broker_backlog()}",
    )
    assert stack.file_row(created["filehash"]) == ("gone", "downloaded")
    assert stack.http.get(created["url"], timeout=10).status_code == 410
    assert_no_errors(restarted)
    assert restarted.alive()
