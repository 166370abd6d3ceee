"""The domain layer: what happens to a file, independent of HTTP.

Every state change that can race (a download consuming the last use, a file going gone
and releasing its content) is one atomic ``UPDATE ... WHERE ... RETURNING`` statement,
so the database decides and concurrent requests cannot over-consume.

Each writer commits, then announces what changed (``events``): the metadata cache, the
fast path's grants and the task queue listen. The content a file points at is counted
by ``blobs``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from flask import current_app
from sqlalchemy import bindparam, case, select, update
from sqlalchemy.orm.util import identity_key

from . import blobs, events, security, transfers
from .extensions import db
from .models import Blob, File, FileStatus, GoneReason, utcnow
from .storage import Upload

UNSET = object()


@dataclass
class Options:
    """Upload options after validation; UNSET leaves a value as it is (PATCH)."""

    password: object = UNSET  # str, None (remove) or UNSET
    max_downloads: object = UNSET  # int or UNSET
    expires_at: object = UNSET  # datetime, None (never) or UNSET
    # The same asked for as a duration (seconds, None: never): a new file's expiry is
    # then counted from its own creation instant, the one its created_at records.
    expires_in: object = UNSET
    touched: set = field(default_factory=set)
    # Already hashed (a resumable upload keeps only the hash until it completes); wins
    # over ``password`` when set.
    password_hash: object = UNSET  # str or UNSET


def whole_second(dt: datetime) -> datetime:
    """HTTP dates have one-second resolution; Last-Modified is kept at that resolution."""
    return dt.replace(microsecond=0)


def find(filehash: str) -> File | None:
    return db.session.execute(select(File).where(File.filehash == filehash)).scalar_one_or_none()


def create(upload: Upload, filename: str, content_type: str, options: Options, *,
           filehash: str | None = None, owner_token: str | None = None) -> tuple[File, str]:
    """Store an upload and its row; returns the file and its owner token (shown once).

    The bytes are fsynced and renamed into place before the row is committed; if the
    commit fails the row is gone and the bytes are an unreferenced blob the sweep removes.
    ``filehash`` and ``owner_token`` are new random ones unless the caller chose them
    (a resumable upload does at its creation: see resumable.py); whatever the caller
    changed in the session is committed with the row.
    """
    now = whole_second(utcnow())
    cfg = current_app.config
    blobs.acquire(upload, now)
    token = owner_token or security.new_owner_token()
    file = File(
        filehash=filehash or security.new_filehash(),
        filename=filename,
        content_type=content_type,
        size=upload.size,
        sha256=upload.sha256,
        password_hash=(
            options.password_hash
            if isinstance(options.password_hash, str)
            else security.hash_password(options.password, cfg["PASSWORD_HASH_METHOD"])
            if isinstance(options.password, str)
            else None
        ),
        owner_token_hash=security.hash_token(token),
        max_downloads=1 if options.max_downloads is UNSET else options.max_downloads,
        downloads=0,
        status=FileStatus.AVAILABLE,
        created_at=now,
        modified_at=now,
        expires_at=(
            (None if options.expires_in is None else now + timedelta(seconds=options.expires_in))
            if options.expires_in is not UNSET
            else now + timedelta(seconds=cfg["DEFAULT_EXPIRES_IN"])
            if options.expires_at is UNSET
            else options.expires_at
        ),
    )
    db.session.add(file)
    db.session.commit()
    return file, token


def replace_content(file: File, upload: Upload, content_type: str | None) -> File:
    """New bytes for an existing URL: new SHA-256, new ETag, new Last-Modified.
    Options and the download count stay as they are."""
    now = whole_second(utcnow())
    old_sha = file.sha256
    # The file's row first, then blob rows: the order downloads, deletions and the sweep
    # take them in. Taking the new blob's row first could deadlock with a sweep batch
    # holding this file and waiting for that blob (PostgreSQL would abort one of them).
    locked = db.session.execute(
        select(File.id)
        .where(File.id == file.id, File.status == FileStatus.AVAILABLE, File.sha256 == old_sha)
        .with_for_update()
    ).first()
    if locked is None:
        db.session.rollback()
        return None
    blobs.acquire(upload, now)
    changed = db.session.execute(
        update(File)
        .where(File.id == file.id, File.status == FileStatus.AVAILABLE, File.sha256 == old_sha)
        .values(
            sha256=upload.sha256,
            size=upload.size,
            content_type=content_type or file.content_type,
            # Last-Modified must move forward even when two replacements land in one second.
            modified_at=max(now, file.modified_at + timedelta(seconds=1)),
        )
        .returning(File.id)
    ).first()
    if changed is None:
        db.session.rollback()
        return None
    released = blobs.release_ref(old_sha, now)
    db.session.commit()
    # Published versions keep their own content: their answers did not change.
    events.announce_files_changed([file.filehash], versions=False)
    db.session.refresh(file)
    if released:
        events.announce_blobs_released([old_sha])
    return file


def update_options(file: File, options: Options) -> File:
    """Apply a PATCH. Lowering max_downloads to what was already used makes the file gone."""
    cfg = current_app.config
    if options.password is not UNSET:
        file.password_hash = (
            None
            if options.password is None
            else security.hash_password(options.password, cfg["PASSWORD_HASH_METHOD"])
        )
        # In the UPDATE itself (concurrent changes each move it); refreshed on next read.
        file.access_version = File.access_version + 1
    if options.expires_at is not UNSET:
        file.expires_at = options.expires_at
    if options.max_downloads is not UNSET:
        file.max_downloads = options.max_downloads
    db.session.commit()
    # A new expiry changes what its versions' answers say too.
    events.announce_files_changed([file.filehash], versions=True)
    if file.max_downloads and file.downloads >= file.max_downloads:
        mark_gone(file.id, GoneReason.DOWNLOADED)
        db.session.refresh(file)
    return file


# What a download's UPDATE hands back about the file: FileMeta's fields (metacache.py),
# so that a download claimed in one statement needs no other read (claim_download).
_META_COLUMNS = (
    "id", "filehash", "sha256", "size", "content_type", "filename", "modified_at", "expires_at",
    "max_downloads", "downloads", "status", "gone_reason", "password_hash", "access_version",
)


def _consume_statement(*, claim: bool):
    """The download-consuming UPDATE, built once: building this expression tree and
    running it through the ORM's bulk-update path cost about 5 ms per download, far more
    than PostgreSQL's work (PERFORMANCE.md). A Core statement on the table with bound
    parameters is compiled once by SQLAlchemy's cache and executed as is.

    ``claim``: the file is named by its filehash, must have no password, and the whole
    file is counted as served (a plain GET: ``claim_download``); otherwise by id and the
    content the request's preconditions were checked against."""
    t = File.__table__
    now = bindparam("now", type_=t.c.expires_at.type)
    last = (t.c.max_downloads > 0) & (t.c.downloads + 1 >= t.c.max_downloads)
    where = [
        t.c.status == FileStatus.AVAILABLE,
        (t.c.max_downloads == 0) | (t.c.downloads < t.c.max_downloads),
        t.c.expires_at.is_(None) | (t.c.expires_at > now),
    ]
    if claim:
        where += [t.c.filehash == bindparam("claimed_filehash"), t.c.password_hash.is_(None)]
        served = t.c.size
        returning = [t.c[name] for name in _META_COLUMNS]
    else:
        where += [
            t.c.id == bindparam("file_id"),
            t.c.sha256 == bindparam("expected_sha256"),
            t.c.access_version == bindparam("expected_access_version"),
        ]
        served = bindparam("nbytes")
        returning = [t.c.id, t.c.status, t.c.sha256, t.c.filehash]
    return (
        update(t)
        .where(*where)
        .values(
            downloads=t.c.downloads + 1,
            bytes_served=t.c.bytes_served + served,
            status=case((last, FileStatus.GONE), else_=t.c.status),
            gone_reason=case((last, GoneReason.DOWNLOADED), else_=t.c.gone_reason),
            gone_at=case((last, now), else_=t.c.gone_at),
        )
        .returning(*returning)
    )


def _with_release(consume):
    """PostgreSQL: the same UPDATE, and when it uses a file's last download, the release
    of its content's reference, in one statement (data-modifying CTEs): a one-time
    download is one round trip and one transaction. The file's row is locked before the
    blob's, as everywhere else."""
    consumed = consume.cte("consumed")
    b = Blob.__table__
    released = (
        update(b)
        .where(b.c.sha256 == consumed.c.sha256, consumed.c.status == FileStatus.GONE)
        .values(
            refcount=b.c.refcount - 1,
            release_after=case((b.c.refcount <= 1, bindparam("release_after", type_=b.c.release_after.type)),
                               else_=b.c.release_after),
        )
        .returning(b.c.refcount)
        .cte("released")
    )
    return select(*consumed.c, select(released.c.refcount).scalar_subquery().label("refcount"))


_CONSUME = _consume_statement(claim=False)
_CLAIM = _consume_statement(claim=True)
_CONSUME_PG = _with_release(_CONSUME)
_CLAIM_PG = _with_release(_CLAIM)


@dataclass
class Consumed:
    """A download used, in a transaction of its own until ``commit`` (or ``abandon``),
    and what the domain announces about it once committed."""

    connection: object
    filehash: str
    sha256: str
    gone: bool
    released: bool
    row: object = None  # the file's columns after the UPDATE (claim_download)

    def record(self, transfer: transfers.Start) -> int:
        """Record the download's transfer in the same transaction (sets its ``id``)."""
        return transfers.add(transfer, self.connection)

    def commit(self) -> None:
        try:
            self.connection.commit()
        finally:
            self.connection.close()
        if self.gone:
            # Cached metadata must stop saying "available" (and HEAD must answer 410).
            events.announce_files_changed([self.filehash], versions=False)
        if self.released and _hold() <= blobs.grace():
            # Held longer (the resume window), the bytes are left to the sweep: a task
            # queued now would find them still held.
            events.announce_blobs_released([self.sha256])

    def abandon(self) -> None:
        self.connection.close()  # rolls the transaction back


def _consume(statement_sqlite, statement_pg, params: dict) -> Consumed | None:
    """Run a consuming UPDATE in a transaction of its own (not committed).

    A Core connection of the engine's pool, not the ORM session: the session's unit of
    work (transaction bookkeeping, identity map, result objects) cost about 0.3 ms of CPU
    per download here, as much as everything else the statement needs (PERFORMANCE.md,
    "Where the CPU of a request goes"), and a download is a single statement."""
    now = utcnow()
    params["now"] = now
    # The last download keeps the content's bytes for RESUME_WINDOW (when longer than the
    # grace period), so that its transfer can be resumed.
    hold = _hold()
    connection = db.engine.connect()
    try:
        if connection.dialect.name == "postgresql":
            params["release_after"] = now + max(blobs.grace(), hold)
            row = connection.execute(statement_pg, params).first()
            released = row is not None and row.refcount is not None and row.refcount <= 0
        else:
            row = connection.execute(statement_sqlite, params).first()
            released = (row is not None and row.status == FileStatus.GONE
                        and blobs.release_ref(row.sha256, now, hold, connection))
    except BaseException:
        connection.close()
        raise
    if row is None:
        connection.close()
        return None
    # A loaded File of this row is now out of date: the next read must see the new count.
    loaded = db.session.identity_map.get(identity_key(File, row.id))
    if loaded is not None:
        db.session.expire(loaded)
    return Consumed(connection, row.filehash, row.sha256, row.status == FileStatus.GONE, released, row)


def _hold() -> timedelta:
    return timedelta(seconds=current_app.config["RESUME_WINDOW"])


def consume_download(file_id: int, nbytes: int, sha256: str, access_version: int,
                     transfer: transfers.Start | None = None) -> bool:
    """Use one download, atomically. False when none is left (or the file went gone,
    expired, changed content or password meanwhile): exactly one of many concurrent
    requests gets the last one. ``sha256`` is the content the request's preconditions
    were checked against; ``access_version`` the one its password (or link) was checked
    under, which may have come from the cache; ``nbytes`` what it will send (counted in
    ``bytes_served``); ``transfer``, when given, is recorded in the same transaction (its
    ``id`` is then set)."""
    consumed = _consume(_CONSUME, _CONSUME_PG, {
        "file_id": file_id, "expected_sha256": sha256, "expected_access_version": access_version, "nbytes": nbytes,
    })
    if consumed is None:
        return False
    if transfer is not None:
        consumed.record(transfer)
    consumed.commit()
    return True


def claim_download(filehash: str) -> Consumed | None:
    """Use one download of the whole file at ``filehash`` if it needs no password and has
    one left, in one statement that also returns the file's columns (``Consumed.row``):
    a plain GET needs no other read. None when the statement matched nothing (unknown,
    gone, expired, used up, or password-protected: the caller then asks the long way).

    The transaction is left open: the caller commits (``Consumed.commit``) once it has
    found the bytes (missing bytes must cost no download), or abandons it."""
    return _consume(_CLAIM, _CLAIM_PG, {"claimed_filehash": filehash})


def mark_gone(file_id: int, reason: str) -> bool:
    """Make an available file gone (deleted, used up or expired) and release its content.
    False when it was already gone: the transition happens once."""
    now = utcnow()
    row = db.session.execute(
        update(File)
        .where(File.id == file_id, File.status == FileStatus.AVAILABLE)
        .values(status=FileStatus.GONE, gone_reason=reason, gone_at=now)
        .returning(File.sha256, File.filehash)
    ).first()
    if row is None:
        db.session.rollback()
        return False
    released = blobs.release_ref(row.sha256, now)
    db.session.commit()
    # Its versions change when they are retired (versions.retire_for_files).
    events.announce_files_changed([row.filehash], versions=False)
    if released:
        events.announce_blobs_released([row.sha256])
    return True


def count_late_downloads(counts: dict[str, tuple[int, int]]) -> int:
    """Add downloads that were answered without the app (nginx's fast path, counted from
    its log by the sweep): ``{filehash: (downloads, bytes)}``. A file they use up (a
    limit set by PATCH since, counted from what was counted then) becomes gone,
    downloaded, and releases its content, as its last download would have. One
    transaction; returns how many files became gone."""
    now = utcnow()
    table = File.__table__
    db.session.execute(
        update(table)
        .where(table.c.filehash == bindparam("fh"))
        .values(downloads=table.c.downloads + bindparam("n"), bytes_served=table.c.bytes_served + bindparam("b")),
        [{"fh": fh, "n": n, "b": nbytes} for fh, (n, nbytes) in counts.items()],
    )
    used_up = db.session.execute(
        update(File)
        .where(
            File.filehash.in_(list(counts)),
            File.status == FileStatus.AVAILABLE,
            File.max_downloads > 0,
            File.downloads >= File.max_downloads,
        )
        .values(status=FileStatus.GONE, gone_reason=GoneReason.DOWNLOADED, gone_at=now)
        .returning(File.sha256, File.filehash)
    ).all()
    if used_up:
        # No task per file: the sweep's release pass removes the bytes after the grace.
        blobs.release_refs(Counter(row.sha256 for row in used_up), now)
    db.session.commit()
    events.announce_files_changed((row.filehash for row in used_up), versions=False)
    return len(used_up)


def expire_due(batch_size: int) -> int:
    """Make one batch of expired, still available files gone and release their content;
    returns how many.

    One transaction and a few set-based statements per batch, whatever its size. Rows
    are locked as they are picked and their status and expiry re-checked, so a file that
    a download, DELETE or PATCH changed meanwhile is left out and every transition
    happens once; rows another transaction holds are left to the next batch. Each blob's
    refcount then drops by the number of its files in the batch. No task is queued per
    file: the sweep's release pass removes the bytes once the grace period is over.
    """
    now = utcnow()
    due = blobs.locked_batch(
        # No ORDER BY: any due rows will do, and an order (by id or expiry) made batches
        # walk past rows that earlier batches had just made gone (PERFORMANCE.md).
        select(File.id)
        .where(File.status == FileStatus.AVAILABLE, File.expires_at <= now)
        .limit(batch_size)
    )
    rows = db.session.execute(
        update(File)
        .where(File.id.in_(select(due.c.id)))
        .values(status=FileStatus.GONE, gone_reason=GoneReason.EXPIRED, gone_at=now)
        .returning(File.sha256, File.filehash)
    ).all()
    if not rows:
        db.session.rollback()
        return 0
    blobs.release_refs(Counter(row.sha256 for row in rows), now)
    db.session.commit()
    # Cached entries already answer 410 past their expires_at, and nginx stopped using
    # their grants at expiry (grants.py): this tidies up.
    events.announce_files_changed((row.filehash for row in rows), versions=True)
    return len(rows)
