"""The domain layer: what happens to a file, independent of HTTP.

Every state change that can race (a download consuming the last use, a file going gone
and releasing its content) is one atomic ``UPDATE ... WHERE ... RETURNING`` statement,
so the database decides and concurrent requests cannot over-consume.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from flask import current_app
from sqlalchemy import bindparam, case, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm.util import identity_key

from . import fastpath, metacache, security
from .extensions import db
from .models import Blob, File, FileStatus, GoneReason, utcnow
from .storage import LocalStorage, UploadFile

log = logging.getLogger(__name__)

UNSET = object()


@dataclass
class Options:
    """Upload options after validation; UNSET leaves a value as it is (PATCH)."""

    password: object = UNSET  # str, None (remove) or UNSET
    max_downloads: object = UNSET  # int or UNSET
    expires_at: object = UNSET  # datetime, None (never) or UNSET
    touched: set = field(default_factory=set)
    # Already hashed (a resumable upload keeps only the hash until it completes); wins
    # over ``password`` when set.
    password_hash: object = UNSET  # str or UNSET


def storage() -> LocalStorage:
    return current_app.extensions["vimeo_storage"]


def whole_second(dt: datetime) -> datetime:
    """HTTP dates have one-second resolution; Last-Modified is kept at that resolution."""
    return dt.replace(microsecond=0)


def find(filehash: str) -> File | None:
    return db.session.execute(select(File).where(File.filehash == filehash)).scalar_one_or_none()


def create(upload: UploadFile, filename: str, content_type: str, options: Options, *,
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
    _acquire_blob(upload, now)
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
            now + timedelta(seconds=cfg["DEFAULT_EXPIRES_IN"])
            if options.expires_at is UNSET
            else options.expires_at
        ),
    )
    db.session.add(file)
    db.session.commit()
    return file, token


def replace_content(file: File, upload: UploadFile, content_type: str | None) -> File:
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
    _acquire_blob(upload, now)
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
    released = _release_blob_ref(old_sha, now)
    db.session.commit()
    metacache.invalidate(file.filehash)
    fastpath.revoke_files([file.filehash], with_versions=False)
    db.session.refresh(file)
    if released:
        queue_release(old_sha)
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
    if options.expires_at is not UNSET:
        file.expires_at = options.expires_at
    if options.max_downloads is not UNSET:
        file.max_downloads = options.max_downloads
    db.session.commit()
    metacache.invalidate(file.filehash)
    # A new expiry changes what its versions' grants say too.
    fastpath.revoke_files([file.filehash])
    if file.max_downloads and file.downloads >= file.max_downloads:
        mark_gone(file.id, GoneReason.DOWNLOADED)
        db.session.refresh(file)
    return file


def _consume_statement():
    """The download-consuming UPDATE, built once: building this expression tree and
    running it through the ORM's bulk-update path cost about 5 ms per download, far more
    than PostgreSQL's work (PERFORMANCE.md). A Core statement on the table with bound
    parameters is compiled once by SQLAlchemy's cache and executed as is."""
    t = File.__table__
    now = bindparam("now", type_=t.c.expires_at.type)
    last = (t.c.max_downloads > 0) & (t.c.downloads + 1 >= t.c.max_downloads)
    return (
        update(t)
        .where(
            t.c.id == bindparam("file_id"),
            t.c.sha256 == bindparam("expected_sha256"),
            t.c.status == FileStatus.AVAILABLE,
            (t.c.max_downloads == 0) | (t.c.downloads < t.c.max_downloads),
            t.c.expires_at.is_(None) | (t.c.expires_at > now),
        )
        .values(
            downloads=t.c.downloads + 1,
            bytes_served=t.c.bytes_served + bindparam("nbytes"),
            status=case((last, FileStatus.GONE), else_=t.c.status),
            gone_reason=case((last, GoneReason.DOWNLOADED), else_=t.c.gone_reason),
            gone_at=case((last, now), else_=t.c.gone_at),
        )
        .returning(t.c.status, t.c.sha256, t.c.filehash)
    )


_CONSUME = _consume_statement()


def consume_download(file_id: int, nbytes: int, sha256: str) -> bool:
    """Use one download, atomically. False when none is left (or the file went gone,
    expired, or changed content meanwhile): exactly one of many concurrent requests gets
    the last one. ``sha256`` is the content the request's preconditions were checked
    against; ``nbytes`` what it will send (counted in ``bytes_served``)."""
    now = utcnow()
    row = db.session.execute(_CONSUME, {"file_id": file_id, "expected_sha256": sha256, "nbytes": nbytes, "now": now}).first()
    # A Core statement leaves a loaded File of this row as it was (the session does not
    # expire on commit): the next read must see the new count and status.
    loaded = db.session.identity_map.get(identity_key(File, file_id))
    if loaded is not None:
        db.session.expire(loaded)
    if row is None:
        db.session.rollback()
        return False
    released = row.status == FileStatus.GONE and _release_blob_ref(row.sha256, now)
    db.session.commit()
    if row.status == FileStatus.GONE:
        # Cached metadata must stop saying "available" (and HEAD must answer 410).
        metacache.invalidate(row.filehash)
    if released:
        queue_release(row.sha256)
    return True


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
    released = _release_blob_ref(row.sha256, now)
    db.session.commit()
    metacache.invalidate(row.filehash)
    # Its versions' grants go when they are retired (versions.retire_for_files).
    fastpath.revoke_files([row.filehash], with_versions=False)
    if released:
        queue_release(row.sha256)
    return True


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
    due = _batch(
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
    _release_blob_refs_bulk(Counter(row.sha256 for row in rows), now)
    db.session.commit()
    # Cached entries already answer 410 past their expires_at; this drops them.
    metacache.invalidate_many(row.filehash for row in rows)
    # nginx stopped using their grants at expiry already (fastpath.py): this tidies up.
    fastpath.revoke_files([row.filehash for row in rows])
    return len(rows)


def _batch(candidates):
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


def _release_blob_refs_bulk(counts: Counter, now: datetime) -> None:
    """Drop each blob's refcount by its count; those reaching zero get ``release_after``.

    Blob rows are locked in hash order first, so two sweeps cannot deadlock on them.
    """
    grace = timedelta(seconds=current_app.config["DELETE_GRACE_SECONDS"])
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
                release_after=case((Blob.refcount <= n, now + grace), else_=Blob.release_after),
            )
        )


def release_blob(sha256: str, pause: float = 0) -> bool:
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
    storage().delete(sha256)
    db.session.commit()
    return True


def release_due_blobs(batch_size: int) -> int:
    """Release one batch of blobs nothing uses whose grace period is over; returns how
    many. Rows are deleted and bytes unlinked in one transaction, as ``release_blob`` does
    for one; rows locked elsewhere (an upload re-using the content) are skipped."""
    now = utcnow()
    due = _batch(
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
    try:
        # An unlink mostly waits on the filesystem (its journal, and the discard of the
        # freed blocks where mounted so): a few in flight at once took a third of the
        # time of one after another here (PERFORMANCE.md, "Sweep").
        with ThreadPoolExecutor(max_workers=8, thread_name_prefix="vimeo-unlink") as pool:
            list(pool.map(storage().delete, shas))
    except BaseException:
        # The rows come back; bytes already unlinked are fine: release is idempotent.
        db.session.rollback()
        raise
    db.session.commit()
    return len(shas)


def releasable_blobs(batch_size: int) -> list[str]:
    """Hashes of up to ``batch_size`` blobs that nothing uses and whose grace is over."""
    now = utcnow()
    shas = db.session.execute(
        select(Blob.sha256)
        .where(Blob.refcount <= 0, Blob.release_after <= now)
        .limit(batch_size)
    ).scalars().all()
    db.session.rollback()
    return list(shas)


def queue_release(sha256: str) -> None:
    """Ask a worker to remove the bytes after the grace period.

    The intent is already committed (refcount 0, ``release_after``), so a broker outage
    loses nothing: the periodic sweep finishes it. The caller is usually a request, so
    the attempt is bounded (BROKER_TIMEOUT), and after a failure this process stops
    trying for BROKER_RETRY_AFTER seconds rather than make every download wait.
    """
    from .tasks import release_blob_task

    cfg = current_app.config
    state = current_app.extensions.setdefault("vimeo_broker", {"down_until": 0.0})
    if time.monotonic() < state["down_until"]:
        log.warning("broker unavailable: the release of a blob is left to the sweep")
        return
    try:
        release_blob_task.apply_async(args=[sha256], countdown=cfg["DELETE_GRACE_SECONDS"])
    except Exception as exc:  # the broker is down or hung: the sweep will do it
        if not release_blob_task.app.conf.task_always_eager:
            state["down_until"] = time.monotonic() + float(cfg["BROKER_RETRY_AFTER"])
        log.warning("could not queue the release of a blob, the sweep will: %s: %s", exc.__class__.__name__, exc)


def _acquire_blob(upload: UploadFile, now: datetime) -> None:
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
    storage().place(upload, mtime=now.timestamp())


def _release_blob_ref(sha256: str, now: datetime) -> bool:
    """One user fewer; at zero the bytes may go after the grace period. Returns whether
    the count reached zero (the caller queues the release after committing)."""
    grace = timedelta(seconds=current_app.config["DELETE_GRACE_SECONDS"])
    row = db.session.execute(
        update(Blob)
        .where(Blob.sha256 == sha256)
        .values(
            refcount=Blob.refcount - 1,
            release_after=case((Blob.refcount <= 1, now + grace), else_=Blob.release_after),
        )
        .returning(Blob.refcount)
    ).first()
    return row is not None and row.refcount <= 0


def parse_expires_in(value, now: datetime) -> datetime | None:
    """``3600``, ``90s``, ``15m``, ``12h``, ``7d`` or ``never`` → the expiry instant (None: never).
    Raises ValueError with a message fit for the client."""
    cfg = current_app.config
    text = _number_text(value).lower()
    maximum = cfg["MAX_EXPIRES_IN"]
    if text == "never":
        if maximum:
            raise ValueError(f"expires_in cannot be 'never' here; the maximum is {maximum} seconds")
        return None
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    multiplier = 1
    if text and text[-1] in units:
        multiplier, text = units[text[-1]], text[:-1]
    if not (text.isascii() and text.isdigit()) or len(text) > 12:
        raise ValueError("expires_in must be seconds, a number with s/m/h/d, or 'never'")
    seconds = int(text) * multiplier
    if seconds < 1:
        raise ValueError("expires_in must be at least 1 second")
    if maximum and seconds > maximum:
        raise ValueError(f"expires_in is more than the maximum of {maximum} seconds")
    if seconds > 100 * 365 * 86400:
        raise ValueError("expires_in is too large; use 'never'")
    # Whole seconds, as the API reports it: the expiry a client is shown is the one enforced.
    return whole_second(now) + timedelta(seconds=seconds)


def parse_max_downloads(value) -> int:
    text = _number_text(value)
    if not (text.isascii() and text.isdigit()) or len(text) > 9:
        raise ValueError("max_downloads must be an integer >= 0 (0 means unlimited)")
    return int(text)


def _number_text(value) -> str:
    """Form fields and headers are text; JSON numbers come typed. JSON counts ``60.0`` as
    an integer, so an integral float reads as one; ``true`` never does."""
    if isinstance(value, bool):
        return "not a number"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()
