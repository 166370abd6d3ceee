"""Resumable uploads, independent of HTTP: rows, offsets, locks and completion.

tus.py speaks the protocol and calls one function here per request. The rules kept here:

- An acknowledged offset is durable: a chunk's bytes are fsynced before the row records
  the new offset, and bytes past the recorded offset (a worker killed mid-chunk) are
  truncated by the next request that takes the upload's lock. So the offset a client is
  told is never ahead of the disk.
- One writer per upload: the lock is the storage's (``flock`` on the data file, released
  by the kernel when a worker dies; on a bucket, a PostgreSQL advisory lock, released
  when the dead worker's connection closes); a second request gets ``UploadBusy`` at once.
- The SHA-256 of the whole content is carried from chunk to chunk in the process
  (``_HashStates``), keyed by upload and offset. A request landing on another worker, or
  after a restart, catches the state up by reading only the bytes it has not seen from
  the disk (all of them, at worst). The alternative, hashing the whole file when the
  last byte arrives, makes the last request take seconds per GiB (PERFORMANCE.md, "tus").
  On a bucket the bytes cannot be read back, so the storage keeps the hash state itself,
  in the row's ``chunk_state`` beside the offset (``saved_hash``; resumable_s3.py).
- Completion is one commit: the file's row (``files.create``, with the filehash chosen at
  creation and an owner token derived from the upload id) and this upload's "completed".
  The owner token is not stored: it is an HMAC of the upload id under a server secret,
  so it can be told again (HEAD) to whoever knows the upload's URL, and to no one else.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import hmac
import logging
import os
import secrets
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import urlsplit

from flask import current_app
from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import InvalidRequestError
from werkzeug.exceptions import RequestEntityTooLarge

from . import files, security, signing
from .extensions import db
from .models import File, ResumableUpload, UploadStatus, utcnow
from .resumable_storage import (
    CHUNK,
    AdvisoryLocks,
    FileLocks,
    Interrupted,
    LocalResumableStorage,
    UploadLocked,
    UploadMissing,
)
from .storage import Storage

log = logging.getLogger(__name__)

# The checksum algorithms a chunk may name in Upload-Checksum (tus checksum extension).
CHECKSUM_ALGORITHMS = ("sha1", "sha256", "sha512", "md5")


class UploadNotFound(Exception):
    """No such upload (never created, terminated, or removed after it expired)."""


class UploadExpired(Exception):
    """Known, but past its Upload-Expires: it can no longer be resumed."""


class UploadBusy(Exception):
    """Another request is writing to this upload right now."""


class OffsetMismatch(Exception):
    """The client's Upload-Offset is not the upload's."""

    def __init__(self, expected: int):
        super().__init__(expected)
        self.expected = expected


class ChecksumMismatch(Exception):
    """The chunk is not what Upload-Checksum says; it was discarded."""


class UploadTooLarge(Exception):
    """More bytes than the upload's length, or than the configured maximum."""


class InsufficientStorage(Exception):
    """Not enough free space for the upload."""


class InvalidRequest(ValueError):
    """A header's value that the protocol does not allow (the message says which)."""


class ClientGone(Exception):
    """The body ended early; what did arrive is kept (no checksum was given)."""


@dataclass
class FileFields:
    """What the completed upload's file will be, validated at creation."""

    filename: str
    content_type: str
    options: files.Options
    metadata_header: str | None = None


@dataclass
class Checksum:
    algorithm: str
    digest: bytes


@dataclass
class Progress:
    """What a request did to an upload: the row as it now is, and the file when the last
    byte made it complete (with its owner token)."""

    upload: ResumableUpload
    file: File | None = None
    owner_token: str | None = None


def storage():
    """The chunk storage chosen at start-up (resumable_storage.py's interface)."""
    return current_app.extensions["vimeo_resumable_storage"]


# Builds the chunk storage of a backend from (its storage, the lock to use).
ResumableFactory = Callable[[Storage, object], object]


def init_app(app, backends: Mapping[str, ResumableFactory] | None = None) -> None:
    """The chunk storage and the per-process hash states. With ``STORAGE_URL`` the
    backend's own chunk storage (the app factory wires ``{"s3": ...}``), locked across
    nodes by PostgreSQL's advisory locks, or by a lock file when the database is one
    machine's (SQLite); without, the files beside the local blobs."""
    cfg = app.config
    store = app.extensions["vimeo_storage"]
    url = cfg.get("STORAGE_URL")
    scheme = urlsplit(str(url)).scheme if url else ""
    if not scheme:
        chunks = LocalResumableStorage(store)
    else:
        factory = (backends or {}).get(scheme)
        if factory is None:
            raise ValueError(f"STORAGE_URL: no resumable upload storage for {scheme}://")
        if cfg["SQLALCHEMY_DATABASE_URI"].startswith("postgresql"):
            locks = AdvisoryLocks(lambda: db.engine)
        else:
            locks = FileLocks(os.path.join(cfg["STORAGE_DIR"], "tus-locks"))
        # A migration's fallback reads from local disk; uploads go to the bucket.
        chunks = factory(getattr(store, "primary", store), locks)
        largest = chunks.max_length()
        if cfg["MAX_RESUMABLE_UPLOAD_SIZE"] > largest:
            raise ValueError(f"MAX_RESUMABLE_UPLOAD_SIZE is more than the store takes ({largest} bytes: "
                             "10,000 parts of S3_PART_SIZE)")
    app.extensions["vimeo_resumable_storage"] = chunks
    app.extensions["vimeo_resumable_hashes"] = _HashStates(cfg["RESUMABLE_HASH_STATES"])


# -- reading ---------------------------------------------------------------------------

def find(upload_id: str) -> ResumableUpload:
    """The upload, or UploadNotFound / UploadExpired."""
    row = db.session.execute(
        select(ResumableUpload).where(ResumableUpload.upload_id == upload_id)
    ).scalar_one_or_none()
    if row is None:
        raise UploadNotFound(upload_id)
    if row.expires_at <= utcnow():
        raise UploadExpired(upload_id)
    return row


def completed_file(upload: ResumableUpload) -> tuple[File | None, str | None]:
    """The file a completed upload became and its owner token (None when the signing
    key was rotated since: the token can no longer be derived)."""
    if upload.status != UploadStatus.COMPLETED:
        return None, None
    file = files.find(upload.filehash)
    if file is None:
        return None, None
    token = owner_token(upload.upload_id)
    return file, (token if security.token_matches(token, file.owner_token_hash) else None)


def owner_token(upload_id: str) -> str:
    """The owner token of the file an upload becomes (see the module's docstring)."""
    digest = hmac.new(signing.derived_secret("tus-owner-token"), upload_id.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


# -- creation --------------------------------------------------------------------------

def create(length: int | None, fields: FileFields) -> ResumableUpload:
    """A new upload of ``length`` bytes (None: told later), with no bytes yet."""
    cfg = current_app.config
    if length is not None:
        if length > cfg["MAX_RESUMABLE_UPLOAD_SIZE"]:
            raise UploadTooLarge(f"Upload-Length is more than the maximum of {cfg['MAX_RESUMABLE_UPLOAD_SIZE']} bytes.")
        _check_free_space(length)
    now = utcnow()
    options = fields.options
    upload_id = secrets.token_hex(16)
    row = ResumableUpload(
        upload_id=upload_id,
        upload_length=length,
        upload_offset=0,
        status=UploadStatus.OPEN,
        upload_metadata=fields.metadata_header,
        filename=fields.filename,
        content_type=fields.content_type,
        password_hash=(
            security.hash_password(options.password, cfg["PASSWORD_HASH_METHOD"])
            if isinstance(options.password, str)
            else None
        ),
        max_downloads=None if options.max_downloads is files.UNSET else options.max_downloads,
        expires_in=_relative_expiry(options, now),
        filehash=security.new_filehash(),
        created_at=now,
        expires_at=now + timedelta(seconds=cfg["RESUMABLE_EXPIRES_IN"]),
    )
    # The bytes' file first: a row never lacks it, and a file without a row (a failed
    # commit) is an orphan the sweep removes.
    storage().create(upload_id)
    db.session.add(row)
    db.session.commit()
    return row


def _relative_expiry(options: files.Options, now: datetime) -> int | None:
    """The file's expiry as seconds after its completion: None the default, 0 never."""
    if options.expires_in is not files.UNSET:
        return 0 if options.expires_in is None else options.expires_in
    if options.expires_at is files.UNSET:
        return None
    if options.expires_at is None:
        return 0
    return max(1, int((options.expires_at - files.whole_second(now)).total_seconds()))


def _check_free_space(needed: int) -> None:
    """Refuse what cannot fit beside the space the other unfinished uploads will need."""
    reserved = db.session.execute(
        select(func.coalesce(func.sum(ResumableUpload.upload_length - ResumableUpload.upload_offset), 0)).where(
            ResumableUpload.status == UploadStatus.OPEN,
            ResumableUpload.upload_length.is_not(None),
            ResumableUpload.expires_at > utcnow(),
        )
    ).scalar_one()
    if needed > storage().free_space() - int(reserved):
        raise InsufficientStorage("There is not enough free space for an upload of this length.")


# -- writing ---------------------------------------------------------------------------

def append(upload_id: str, stream, *, offset: int, content_length: int | None,
           length: int | None = None, checksum: Checksum | None = None,
           chunk_limit: int | None = None) -> Progress:
    """Apply one chunk (a PATCH's body, or a creation's) at ``offset``.

    ``length`` is the Upload-Length the request names (a deferred one is set by it).
    The chunk is refused whole (nothing changes) when the offset is not the upload's
    (``OffsetMismatch``), when it would pass the length (``UploadTooLarge``) or when
    its checksum does not match (``ChecksumMismatch``). Without a checksum, bytes that
    arrived before the client went away are kept (``ClientGone`` after recording them).
    ``chunk_limit`` bounds a body of unknown length (chunked): reading stops there, and a
    body going on past it is refused whole.
    """
    cfg = current_app.config
    upload = find(upload_id)
    if upload.status != UploadStatus.OPEN:
        # Complete already (its last answer was lost): the client learns it from the offset.
        raise OffsetMismatch(upload.upload_offset)
    try:
        chunks = storage().open_resumable(upload_id)
    except UploadLocked:
        raise UploadBusy(upload_id) from None
    except UploadMissing:
        # Completed (its bytes are the file's now) or removed since we read the row.
        now = db.session.execute(
            select(ResumableUpload.status, ResumableUpload.upload_offset).where(ResumableUpload.id == upload.id)
        ).first()
        db.session.rollback()
        if now is not None and now.status != UploadStatus.OPEN:
            raise OffsetMismatch(now.upload_offset) from None
        raise UploadNotFound(upload_id) from None
    with chunks, ExitStack() as closing:
        # Under the lock: the row as the last writer left it.
        try:
            db.session.refresh(upload)
        except InvalidRequestError:  # removed (terminated, swept) meanwhile
            db.session.rollback()
            raise UploadNotFound(upload_id) from None
        if upload.status != UploadStatus.OPEN:
            raise OffsetMismatch(upload.upload_offset)
        start = upload.upload_offset
        # What a worker killed mid-chunk wrote past the offset was never acknowledged.
        chunks.resume(start, upload.chunk_state)
        if offset != start:
            raise OffsetMismatch(start)
        if length is not None:
            if upload.upload_length is None:
                if length < start:
                    raise InvalidRequest("Upload-Length is less than what was already uploaded.")
                if length > cfg["MAX_RESUMABLE_UPLOAD_SIZE"]:
                    raise UploadTooLarge(
                        f"Upload-Length is more than the maximum of {cfg['MAX_RESUMABLE_UPLOAD_SIZE']} bytes."
                    )
                _check_free_space(length - start)
                upload.upload_length = length
            elif length != upload.upload_length:
                raise InvalidRequest("Upload-Length cannot change once it is set.")
        total = upload.upload_length
        room = (total if total is not None else cfg["MAX_RESUMABLE_UPLOAD_SIZE"]) - start
        if content_length is not None and content_length > room:
            raise UploadTooLarge("The chunk goes past the upload's length." if total is not None
                                 else "The upload would be larger than the maximum.")
        if total is None and content_length:
            _check_free_space(content_length)

        hashes = current_app.extensions["vimeo_resumable_hashes"]
        whole = chunks.saved_hash()
        carried = whole is None
        if carried:
            whole = hashes.take(upload_id, start, chunks)
        observers = [whole]
        chunk_hash = None
        limit = room if content_length is not None or chunk_limit is None else min(room, chunk_limit)
        if checksum is not None and chunks.verify_first:
            stream = _verified(stream, content_length, limit, checksum)
            closing.callback(stream.close)
            checksum = None
        if checksum is not None:
            chunk_hash = hashlib.new(checksum.algorithm)
            observers.append(chunk_hash)

        gone = None
        try:
            end = _write(chunks, stream, start, limit, observers)
            if content_length is None and end - start == limit and _more(stream):
                chunks.truncate(start)
                raise UploadTooLarge("The chunk goes past the upload's length." if total is not None
                                     else "The upload would be larger than the maximum.")
        except Interrupted as exc:
            if checksum is not None:
                chunks.truncate(start)
                raise ClientGone() from exc
            end, gone = exc.offset, exc
        except OSError as exc:
            chunks.truncate(start)
            if exc.errno == errno.ENOSPC:
                raise InsufficientStorage("The storage is full.") from exc
            raise
        if content_length is not None and gone is None and end - start != content_length:
            # gunicorn reports a client that hung up as a plain end of input.
            gone = True
        if chunk_hash is not None:
            if gone is not None:
                chunks.truncate(start)
                raise ClientGone()
            if not hmac.compare_digest(chunk_hash.digest(), checksum.digest):
                chunks.truncate(start)
                raise ChecksumMismatch()

        now = utcnow()
        if total is not None and end == total:
            return _complete(upload, chunks, whole, start, now)
        if end != start or upload.upload_length != total:
            _record(upload, chunks, start, end, now)
        if carried:
            hashes.put(upload_id, end, whole)
        if gone is not None:
            raise ClientGone()
        return Progress(upload)


def _verified(stream, content_length: int | None, limit: int, checksum: Checksum):
    """The chunk, checked against its Upload-Checksum before any of it is stored (for a
    storage that cannot take bytes back): nginx's body file read in place, or the body
    copied into an anonymous file on this node's scratch space (gone with the request,
    even after ``kill -9``). Refused whole like a chunk checked as it is written."""
    digest = hashlib.new(checksum.algorithm)
    try:
        in_place = stat.S_ISREG(os.fstat(stream.fileno()).st_mode)
    except (AttributeError, OSError, ValueError):
        in_place = False
    if in_place:
        spool, first = stream, stream.tell()
    else:
        directory = os.path.join(current_app.config["STORAGE_DIR"], "tus-spool")
        os.makedirs(directory, mode=0o700, exist_ok=True)
        spool, first = tempfile.TemporaryFile(dir=directory), 0
    try:
        size = 0
        while size < limit:
            try:
                block = stream.read(min(CHUNK, limit - size))
            except Exception as exc:  # the client went away mid-chunk
                raise ClientGone() from exc
            if not block:
                break
            digest.update(block)
            if not in_place:
                spool.write(block)
            size += len(block)
        if content_length is None and size == limit and _more(stream):
            raise UploadTooLarge("The chunk goes past the upload's length.")
        if content_length is not None and size != content_length:
            raise ClientGone()  # gunicorn reports a client that hung up as the end of input
        if not hmac.compare_digest(digest.digest(), checksum.digest):
            raise ChecksumMismatch()
        spool.seek(first)
    except BaseException:
        if not in_place:
            spool.close()
        raise
    # nginx's body file is closed by the request's teardown; a spool by ``close``.
    return _Bounded(spool, size, owned=not in_place)


class _Bounded:
    """A verified chunk: exactly its bytes, then the end."""

    def __init__(self, fh, size: int, owned: bool):
        self._fh = fh
        self._left = size
        self._owned = owned

    def close(self) -> None:
        if self._owned:
            self._fh.close()

    def read(self, n: int = -1) -> bytes:
        if self._left <= 0:
            return b""
        n = self._left if n is None or n < 0 else min(n, self._left)
        block = self._fh.read(n)
        self._left -= len(block)
        return block


def _write(chunks, stream, start: int, room: int, observers) -> int:
    """The chunk's bytes at ``start``. Tests only (TEST_RESUMABLE_PAUSE): while the file
    ``<STORAGE_DIR>/TEST_RESUMABLE_PAUSE`` exists, a chunk waits after its first MiB,
    holding the upload's lock, so a test can kill the worker or send a rival chunk."""
    cfg = current_app.config
    pause = float(cfg["TEST_RESUMABLE_PAUSE"])
    marker = os.path.join(cfg["STORAGE_DIR"], "TEST_RESUMABLE_PAUSE")
    if not pause or not os.path.exists(marker):
        return chunks.append(stream, start, room, observers)
    first = min(room, 1024 * 1024)
    end = chunks.append(stream, start, first, observers)
    if end - start < first:
        return end
    log.warning("TEST_RESUMABLE_PAUSE: pid %d paused inside a chunk", os.getpid())
    deadline = time.monotonic() + pause
    while os.path.exists(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    return chunks.append(stream, end, room - (end - start), observers)


def _more(stream) -> bool:
    """Whether a body goes on past what was read (a chunked one has no Content-Length)."""
    try:
        return bool(stream.read(1))
    except RequestEntityTooLarge:  # werkzeug's bound on the body: there was more
        return True
    except Exception:  # the client went away right at the end: nothing more came
        return False


def _record(upload: ResumableUpload, chunks, start: int, end: int, now: datetime) -> None:
    """Record the durable offset (and refresh the expiry), with the storage's own
    bookkeeping of it; the lock makes it ours alone, the WHERE makes sure of it."""
    values = {
        "upload_offset": end,
        "upload_length": upload.upload_length,
        "expires_at": now + timedelta(seconds=current_app.config["RESUMABLE_EXPIRES_IN"]),
        "chunk_state": chunks.durable_state(),
    }
    changed = db.session.execute(
        update(ResumableUpload)
        .where(ResumableUpload.id == upload.id, ResumableUpload.upload_offset == start,
               ResumableUpload.status == UploadStatus.OPEN)
        .values(**values)
        .returning(ResumableUpload.id)
    ).first()
    if changed is None:
        db.session.rollback()
        raise UploadNotFound(upload.upload_id)
    db.session.commit()
    chunks.recorded()
    for name, value in values.items():
        setattr(upload, name, value)


def _complete(upload: ResumableUpload, chunks, whole, start: int, now: datetime) -> Progress:
    """The last byte is in: the file's row and the upload's completion, in one commit."""
    cfg = current_app.config
    length = upload.upload_length
    finished = chunks.finish(whole.hexdigest(), length)
    token = owner_token(upload.upload_id)
    try:
        changed = db.session.execute(
            update(ResumableUpload)
            .where(ResumableUpload.id == upload.id, ResumableUpload.upload_offset == start,
                   ResumableUpload.status == UploadStatus.OPEN)
            .values(
                status=UploadStatus.COMPLETED,
                upload_offset=length,
                upload_length=length,
                completed_at=now,
                # HEAD tells the result until then; then the sweep forgets the upload.
                expires_at=now + timedelta(seconds=cfg["RESUMABLE_EXPIRES_IN"]),
            )
            .returning(ResumableUpload.id)
        ).first()
        if changed is None:
            raise UploadNotFound(upload.upload_id)
        file, token = files.create(
            finished, upload.filename, upload.content_type, _file_options(upload, now),
            filehash=upload.filehash, owner_token=token,
        )
    except BaseException:
        db.session.rollback()
        finished.close()
        raise
    finished.close()
    chunks.discard()
    current_app.extensions["vimeo_resumable_hashes"].drop(upload.upload_id)
    db.session.refresh(upload)
    return Progress(upload, file, token)


def _file_options(upload: ResumableUpload, now: datetime) -> files.Options:
    options = files.Options()
    if upload.password_hash is not None:
        options.password_hash = upload.password_hash
    if upload.max_downloads is not None:
        options.max_downloads = upload.max_downloads
    # As seconds: the file's expiry counts from its creation instant (files.create).
    if upload.expires_in == 0:
        options.expires_in = None
    elif upload.expires_in is not None:
        options.expires_in = upload.expires_in
    return options


# -- ending ----------------------------------------------------------------------------

def terminate(upload_id: str) -> None:
    """Forget an upload and free its bytes (tus termination). A completed upload's file
    stays: it is deleted with its owner token like any file."""
    upload = find(upload_id)
    try:
        chunks = storage().open_resumable(upload_id)
    except UploadLocked:
        raise UploadBusy(upload_id) from None
    except UploadMissing:
        chunks = None  # completed (its bytes are the file's now) or half-removed
    try:
        db.session.execute(delete(ResumableUpload).where(ResumableUpload.id == upload.id))
        db.session.commit()
        if chunks is not None:
            chunks.discard()
    finally:
        if chunks is not None:
            chunks.close()
    current_app.extensions["vimeo_resumable_hashes"].drop(upload_id)


def remove_expired(batch_size: int) -> int:
    """Remove one batch of uploads past their Upload-Expires (bytes and rows); returns
    how many. One being written to right now is left for the next sweep."""
    now = utcnow()
    rows = db.session.execute(
        select(ResumableUpload.id, ResumableUpload.upload_id)
        .where(ResumableUpload.expires_at <= now)
        .limit(batch_size)
    ).all()
    db.session.rollback()
    removed = 0
    for row in rows:
        if _remove(row.id, row.upload_id, ResumableUpload.expires_at <= now):
            removed += 1
    return removed


def abort(upload_id: str) -> bool:
    """End an unfinished upload now (``manage.py uploads abort``); False when there is
    no such unfinished upload. Raises UploadBusy when a request is writing to it."""
    row = db.session.execute(
        select(ResumableUpload.id).where(
            ResumableUpload.upload_id == upload_id, ResumableUpload.status == UploadStatus.OPEN
        )
    ).first()
    db.session.rollback()
    if row is None:
        return False
    removed = _remove(row.id, upload_id, ResumableUpload.status == UploadStatus.OPEN)
    if removed is None:
        raise UploadBusy(upload_id)
    return removed


def _remove(row_id: int, upload_id: str, condition) -> bool | None:
    """Delete the row (if ``condition`` still holds) and the bytes, under the upload's
    lock. Whether the row went; None when a request holds the lock."""
    try:
        chunks = storage().open_resumable(upload_id)
    except UploadLocked:
        return None
    except UploadMissing:
        chunks = None
    try:
        deleted = db.session.execute(
            delete(ResumableUpload).where(ResumableUpload.id == row_id, condition).returning(ResumableUpload.id)
        ).first()
        db.session.commit()
        if deleted is not None and chunks is not None:
            chunks.discard()
    finally:
        if chunks is not None:
            chunks.close()
    current_app.extensions["vimeo_resumable_hashes"].drop(upload_id)
    return deleted is not None


def remove_orphans(min_age: float) -> int:
    """Remove stored uploads that no row knows (a creation whose commit failed, a
    removal killed between its commit and its unlink); returns how many. Young ones are
    skipped: their creation may still be committing."""
    cutoff = time.time() - min_age
    # One upload may have several things stored (a bucket's multipart upload and tails).
    candidates = list(dict.fromkeys(upload_id for upload_id, mtime in storage().iter_uploads() if mtime < cutoff))
    removed = 0
    for start in range(0, len(candidates), 500):
        batch = candidates[start:start + 500]
        known = set(db.session.execute(
            select(ResumableUpload.upload_id).where(ResumableUpload.upload_id.in_(batch))
        ).scalars())
        db.session.rollback()
        for upload_id in batch:
            if upload_id in known:
                continue
            try:
                chunks = storage().open_resumable(upload_id)
            except (UploadLocked, UploadMissing):
                continue
            with chunks:
                chunks.discard()
            removed += 1
    return removed


def unfinished(limit: int | None = None) -> list[ResumableUpload]:
    """Unfinished uploads, oldest first (``manage.py uploads list``)."""
    query = (
        select(ResumableUpload)
        .where(ResumableUpload.status == UploadStatus.OPEN)
        .order_by(ResumableUpload.created_at, ResumableUpload.id)
    )
    if limit:
        query = query.limit(limit)
    return list(db.session.execute(query).scalars())


# -- the SHA-256 carried between chunks ------------------------------------------------

class _HashStates:
    """The running SHA-256 of recent uploads in this process, by upload id and offset.

    Bounded (least recently used first out): a state is small, but uploads are many. A
    state is used only under the upload's lock, and only for the offset it was saved at;
    bytes below an acknowledged offset never change, so a state saved at an older offset
    (another worker took the chunks since) is caught up from the disk.
    """

    def __init__(self, capacity: int):
        self.capacity = max(1, int(capacity))
        self.states: OrderedDict[str, tuple[int, object]] = OrderedDict()
        self.lock = threading.Lock()
        # How many bytes had to be read back from disk (observability, tests and bench).
        self.bytes_reread = 0

    def take(self, upload_id: str, offset: int, chunks):
        """The hash of the upload's first ``offset`` bytes (a copy: the caller may fail)."""
        with self.lock:
            saved = self.states.get(upload_id)
        if saved is not None and saved[0] <= offset:
            position, state = saved[0], saved[1].copy()
        else:
            position, state = 0, hashlib.sha256()
        for block in chunks.read(position, offset):
            state.update(block)
        with self.lock:
            self.bytes_reread += offset - position
        return state

    def put(self, upload_id: str, offset: int, state) -> None:
        with self.lock:
            self.states[upload_id] = (offset, state)
            self.states.move_to_end(upload_id)
            while len(self.states) > self.capacity:
                self.states.popitem(last=False)

    def drop(self, upload_id: str) -> None:
        with self.lock:
            self.states.pop(upload_id, None)
