"""Stored content, once per SHA-256, and how many files and versions use it.

A blob row's ``refcount`` counts the live files and published versions using its bytes;
at zero the bytes may go once ``release_after`` (the grace period) has passed. Acquiring
takes the row's lock before the bytes are placed, and releasing deletes the row and
unlinks the bytes in one transaction, so an upload of the same content can never lose
bytes to a concurrent release.

Writers commit; whoever made a blob's count reach zero then announces it
(``events.blobs_released``) so that the task queue can hurry its removal. The intent is
already in the database either way: the sweep finishes what no task did.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

from flask import current_app
from sqlalchemy import case, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite

from . import storage
from .extensions import db
from .models import Blob, utcnow
from .storage import Upload

log = logging.getLogger(__name__)


def grace() -> timedelta:
    """How long bytes stay after their last user went (DELETE_GRACE_SECONDS)."""
    return timedelta(seconds=current_app.config["DELETE_GRACE_SECONDS"])


def acquire(upload: Upload, now: datetime) -> None:
    """Count one more user of the upload's content and make sure its bytes are in place.

    The upsert takes the blob row's lock before the bytes are placed, so a release of the
    same content cannot remove them between our check and our commit.
    """
    dialect = db.session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = insert(Blob).values(sha256=upload.sha256, size=upload.size, refcount=1, created_at=now)
    stmt = stmt.on_conflict_do_update(
        index_elements=[Blob.sha256],
        set_={"refcount": Blob.refcount + 1, "release_after": None},
    )
    db.session.execute(stmt)
    storage.current().place(upload, mtime=now.timestamp())


def add_ref(sha256: str) -> None:
    """One more user of content that is stored and in use (a version being published):
    nothing can release it meanwhile. The UPDATE holds the row's lock until commit."""
    db.session.execute(
        update(Blob).where(Blob.sha256 == sha256).values(refcount=Blob.refcount + 1, release_after=None)
    )


def release_ref(sha256: str, now: datetime, hold: timedelta | None = None, connection=None) -> bool:
    """One user fewer; at zero the bytes may go after the grace period, or after ``hold``
    when that is longer (a used-up file's resume window). Returns whether the count
    reached zero (the caller announces it after committing). ``connection``: a Core
    connection whose transaction this joins (default: the session's)."""
    keep = max(grace(), hold or timedelta(0))
    row = (connection or db.session).execute(
        update(Blob)
        .where(Blob.sha256 == sha256)
        .values(
            refcount=Blob.refcount - 1,
            release_after=case((Blob.refcount <= 1, now + keep), else_=Blob.release_after),
        )
        .returning(Blob.refcount)
    ).first()
    return row is not None and row.refcount <= 0


def release_refs(counts: Counter, now: datetime) -> None:
    """Drop each blob's refcount by its count; those reaching zero get ``release_after``.

    Blob rows are locked in hash order first, so two sweeps cannot deadlock on them.
    """
    delay = grace()
    db.session.execute(
        select(Blob.sha256).where(Blob.sha256.in_(sorted(counts))).order_by(Blob.sha256).with_for_update()
    )
    by_count: dict[int, list[str]] = defaultdict(list)
    for sha256, n in counts.items():
        by_count[n].append(sha256)
    for n, shas in by_count.items():
        db.session.execute(
            update(Blob)
            .where(Blob.sha256.in_(shas))
            .values(
                refcount=Blob.refcount - n,
                release_after=case((Blob.refcount <= n, now + delay), else_=Blob.release_after),
            )
        )


def locked_batch(candidates):
    """A batch's rows as a CTE computed once and locked, skipping rows others hold.

    The statement using it needs no second copy of the conditions: PostgreSQL re-checks
    them on a row's latest version as it locks it (and SQLite runs the statement under
    its single write lock). Repeating them is worse than useless: with statistics that
    lag behind the sweep's own updates, PostgreSQL then drove the statement from those
    conditions and compared every due row with the whole batch, which made one batch of
    500 take a second instead of milliseconds. MATERIALIZED keeps the LIMIT query from
    being inlined and re-run.
    """
    return (
        candidates.with_for_update(skip_locked=True)
        .cte("batch")
        .prefix_with("MATERIALIZED", dialect="postgresql")
    )


def release(sha256: str, pause: float = 0) -> bool:
    """Remove a blob's bytes if nothing uses it and its grace period is over (idempotent).

    The row is deleted and the file unlinked in one transaction: the row lock keeps a
    concurrent upload of the same content from reusing bytes that are being removed, and a
    process killed in between leaves the row (rolled back) for the task's redelivery or the
    sweep. ``pause`` exists for tests only (see ``TEST_RELEASE_DELAY``).
    """
    now = utcnow()
    row = db.session.execute(
        delete(Blob)
        .where(Blob.sha256 == sha256, Blob.refcount <= 0, Blob.release_after <= now)
        .returning(Blob.sha256)
    ).first()
    if row is None:
        db.session.rollback()
        return False
    if pause:
        log.warning("TEST_RELEASE_DELAY: pausing %ss inside the release of %s", pause, sha256)
        time.sleep(pause)
    storage.current().delete(sha256)
    db.session.commit()
    return True


def release_due(batch_size: int) -> int:
    """Release one batch of blobs nothing uses whose grace period is over; returns how
    many. Rows are deleted and bytes unlinked in one transaction, as ``release`` does
    for one; rows locked elsewhere (an upload re-using the content) are skipped."""
    now = utcnow()
    due = locked_batch(
        select(Blob.sha256)
        .where(Blob.refcount <= 0, Blob.release_after <= now)
        .order_by(Blob.release_after)
        .limit(batch_size)
    )
    shas = db.session.execute(
        delete(Blob)
        .where(Blob.sha256.in_(select(due.c.sha256)))
        .returning(Blob.sha256)
    ).scalars().all()
    if not shas:
        db.session.rollback()
        return 0
    store = storage.current()
    try:
        # An unlink mostly waits on the filesystem (its journal, and the discard of the
        # freed blocks where mounted so): a few in flight at once took a third of the
        # time of one after another here (PERFORMANCE.md, "Sweep").
        with ThreadPoolExecutor(max_workers=8, thread_name_prefix="vimeo-unlink") as pool:
            list(pool.map(store.delete, shas))
    except BaseException:
        # The rows come back; bytes already unlinked are fine: release is idempotent.
        db.session.rollback()
        raise
    db.session.commit()
    return len(shas)


def releasable(batch_size: int) -> list[str]:
    """Hashes of up to ``batch_size`` blobs that nothing uses and whose grace is over."""
    now = utcnow()
    shas = db.session.execute(
        select(Blob.sha256)
        .where(Blob.refcount <= 0, Blob.release_after <= now)
        .limit(batch_size)
    ).scalars().all()
    db.session.rollback()
    return list(shas)


def adopt_orphans(rows: list[dict]) -> int:
    """Record stored bytes no row knew as blobs nobody uses, due at once (the sweep's
    orphan scan): the release pass then removes them under the row's lock."""
    insert = postgresql.insert if db.session.get_bind().dialect.name == "postgresql" else sqlite.insert
    result = db.session.execute(insert(Blob).values(rows).on_conflict_do_nothing(index_elements=[Blob.sha256]))
    db.session.commit()
    return result.rowcount


def known(shas: list[str]) -> set[str]:
    """Which of these hashes have a blob row."""
    return set(db.session.execute(select(Blob.sha256).where(Blob.sha256.in_(shas))).scalars())
