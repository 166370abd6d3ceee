"""Where the bytes of unfinished resumable uploads live: one small interface of their own.

``LocalResumableStorage`` keeps each upload as one file, ``<STORAGE_DIR>/resumable/<id>``,
on the filesystem of the blobs, appended to chunk by chunk and placed by a hard link
when complete (so placing is a rename, never a copy). On object storage,
vimeo_api/resumable_s3.py keeps each upload as an S3 multipart upload. The interface is
what the domain (resumable.py) needs:

- ``create(upload_id)`` makes the empty upload;
- ``open_resumable(upload_id)`` takes the upload's lock and returns a handle with
  ``resume(offset, state)`` (under the lock: the acknowledged offset and the storage's
  own bookkeeping recorded with it, the row's ``chunk_state``), ``saved_hash()`` (the
  SHA-256 of the bytes up to the offset when the storage keeps it, else None: the
  domain catches up by ``read``), ``append(stream, offset, limit, observers) ->
  new_offset``, ``truncate(offset)``, ``length()``, ``read(start, stop)``,
  ``durable_state()`` (make the bytes appended durable; the bookkeeping to record with
  the new offset, in the same commit), ``recorded()`` (after that commit),
  ``finish(sha256, size) -> upload`` (what the storage's ``place`` accepts) and
  ``discard()``; ``verify_first``: bytes it was given cannot be taken back, so a chunk
  with a checksum is verified before it is appended;
- ``iter_uploads()`` and ``free_space()`` for the sweep and the limits.

The local lock is ``flock`` on the data file: the kernel releases it when the process
holding it dies, even by ``kill -9``, and it excludes other processes (gunicorn's
workers) and other threads alike, since each ``open`` is its own open file description.
A lease in the database would outlive a killed worker and block its upload until the
lease ran out. Uploads several nodes share take ``AdvisoryLocks`` (PostgreSQL's, released
when the holder's connection closes) or, on one machine, ``FileLocks``.

Upload ids are 32 lowercase hex characters made by the app (checked here again); no
path is built from anything else.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import re
import secrets
from collections.abc import Callable, Iterable, Iterator

from sqlalchemy import text

from .storage import CHUNK, LocalStorage

UPLOAD_ID = re.compile(r"^[0-9a-f]{32}$")


class UploadMissing(Exception):
    """No bytes are stored under this id (never created, removed, or completed)."""


class UploadLocked(Exception):
    """Another request (in this process or another) is writing to this upload."""


class Interrupted(Exception):
    """The body stopped before its end (the client went away). ``offset`` is how far the
    bytes that did arrive reach; they are written and durable."""

    def __init__(self, offset: int, cause: BaseException):
        super().__init__(str(cause))
        self.offset = offset
        self.cause = cause


class FinishedUpload:
    """A complete upload as ``LocalStorage.place`` and ``files.create`` take it: a
    temporary hard link to the data file, its SHA-256 and size already known.

    Closing it without ``placed`` set removes the link only; the data file stays until
    ``discard``, so a completion that fails can be tried again.
    """

    def __init__(self, path: str, sha256: str, size: int):
        self.path = path
        self.sha256 = sha256
        self.size = size
        self.placed = False

    def finish(self) -> None:
        """Durable already (every append is fsynced); the link itself is made durable by
        the rename's directory fsync in ``place``."""

    def close(self) -> None:
        if not self.placed:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass


class LocalResumable:
    """One upload's bytes, locked for the holder of this handle until ``close``."""

    # Each append is written in place and can be truncated away: a chunk's checksum is
    # checked as it is written.
    verify_first = False

    def __init__(self, fd: int, path: str, tmp_dir: str):
        self._fd = fd
        self.path = path
        self._tmp_dir = tmp_dir

    def resume(self, offset: int, state: str | None = None) -> None:
        """Go on from the acknowledged ``offset``: bytes past it (a worker killed
        mid-chunk wrote them) were never acknowledged and are dropped."""
        if self.length() != offset:
            self.truncate(offset)

    def saved_hash(self):
        """None: the domain keeps the hash per process and catches up by ``read``."""
        return None

    def durable_state(self) -> None:
        """Every append is fsynced already; no bookkeeping beside the offset."""
        return None

    def recorded(self) -> None:
        """Nothing to tidy once the offset is recorded."""

    def length(self) -> int:
        """Bytes stored, which after a killed worker may exceed what was acknowledged."""
        return os.fstat(self._fd).st_size

    def truncate(self, offset: int) -> None:
        """Drop everything past ``offset`` (bytes never acknowledged, or a refused chunk)."""
        os.ftruncate(self._fd, offset)
        os.fsync(self._fd)

    def append(self, stream, offset: int, limit: int, observers: Iterable = ()) -> int:
        """Write up to ``limit`` bytes read from ``stream`` at ``offset``; each block goes
        to every observer's ``update`` (hashes) first. Returns the new offset, durable
        (fsynced) before it is returned. A stream that fails part-way raises
        ``Interrupted`` carrying the durable offset of what did arrive."""
        observers = tuple(observers)
        position = offset
        end = offset + limit
        while position < end:
            try:
                block = stream.read(min(CHUNK, end - position))
            except Exception as exc:  # the client went away (werkzeug's ClientDisconnected, a reset)
                os.fsync(self._fd)
                raise Interrupted(position, exc) from exc
            if not block:
                break
            for observer in observers:
                observer.update(block)
            view = memoryview(block)
            while view:
                written = os.pwrite(self._fd, view, position)
                position += written
                view = view[written:]
        os.fsync(self._fd)
        return position

    def read(self, start: int, stop: int) -> Iterator[bytes]:
        """The stored bytes [start, stop), in blocks (to catch a hash up from disk)."""
        position = start
        while position < stop:
            block = os.pread(self._fd, min(CHUNK, stop - position), position)
            if not block:
                raise OSError(errno.EIO, "the upload's data file is shorter than its recorded offset")
            position += len(block)
            yield block

    def finish(self, sha256: str, size: int) -> FinishedUpload:
        """The complete upload, ready to be placed under its hash."""
        os.makedirs(self._tmp_dir, mode=0o700, exist_ok=True)
        link = os.path.join(self._tmp_dir, secrets.token_hex(16) + ".part")
        os.link(self.path, link)
        return FinishedUpload(link, sha256, size)

    def discard(self) -> None:
        """Remove the bytes (the lock is still held, so no writer is mid-chunk)."""
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def close(self) -> None:
        """Release the lock."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class LocalResumableStorage:
    """Unfinished uploads under ``<root>/resumable/``, beside the blobs."""

    def __init__(self, storage: LocalStorage):
        self.storage = storage
        self.directory = os.path.join(storage.root, "resumable")

    def path(self, upload_id: str) -> str:
        if not UPLOAD_ID.match(upload_id):
            raise ValueError("not an upload id")
        return os.path.join(self.directory, upload_id)

    def create(self, upload_id: str) -> None:
        """An empty upload (made before its row, so a row always has its file)."""
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        fd = os.open(self.path(upload_id), os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o600)
        os.close(fd)
        _fsync_dir(self.directory)

    def open_resumable(self, upload_id: str) -> LocalResumable:
        """The upload's bytes, locked; ``UploadLocked`` at once when another holds them
        (a waiting request would only hold a thread and then find a stale offset)."""
        try:
            fd = _open_locked(self.path(upload_id), os.O_RDWR, upload_id)
        except FileNotFoundError:
            raise UploadMissing(upload_id) from None
        if fd is None:
            # Removed (terminated, swept) between our open and our lock: its name is gone.
            raise UploadMissing(upload_id)
        return LocalResumable(fd, self.path(upload_id), self.storage.tmp_dir)

    def iter_uploads(self) -> Iterator[tuple[str, float]]:
        """(upload id, mtime) of every stored upload (for the sweep's orphan pass)."""
        try:
            entries = list(os.scandir(self.directory))
        except FileNotFoundError:
            return
        for entry in entries:
            if UPLOAD_ID.match(entry.name):
                try:
                    yield entry.name, entry.stat().st_mtime
                except FileNotFoundError:
                    continue

    def free_space(self) -> int:
        """Bytes an unprivileged writer may still use on the storage filesystem."""
        os.makedirs(self.storage.root, exist_ok=True)
        stat = os.statvfs(self.storage.root)
        return stat.f_bavail * stat.f_frsize


def _open_locked(path: str, flags: int, upload_id: str) -> int | None:
    """``path`` opened and exclusively flocked without waiting (``UploadLocked`` when another
    holds it); None when the name no longer leads to the file locked (removed or replaced
    between the open and the lock: the lock then guards nothing)."""
    fd = os.open(path, flags | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.path.samestat(os.fstat(fd), os.stat(path)):
            return fd
    except BlockingIOError:
        os.close(fd)
        raise UploadLocked(upload_id) from None
    except FileNotFoundError:
        pass
    except BaseException:
        os.close(fd)
        raise
    os.close(fd)
    return None


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- locks for uploads whose bytes are not one local file ---------------------------------

class FileLocks:
    """One writer per upload on one machine: ``flock`` on ``<directory>/<id>.lock``,
    released by the kernel when the holder dies (``kill -9`` included). For an upload
    stored elsewhere (a bucket) with a database that only one machine uses (SQLite)."""

    def __init__(self, directory: str):
        self.directory = directory

    def acquire(self, upload_id: str) -> "_FileLock":
        """The upload's lock, or ``UploadLocked`` at once when another holds it."""
        if not UPLOAD_ID.match(upload_id):
            raise ValueError("not an upload id")
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        path = os.path.join(self.directory, upload_id + ".lock")
        for _attempt in range(3):
            fd = _open_locked(path, os.O_CREAT | os.O_RDWR, upload_id)
            if fd is not None:
                return _FileLock(fd, path)
            # Its holder removed the file (``forget``) between our open and our lock: the
            # lock was on a name nobody else can find. Take the new one.
        raise UploadLocked(upload_id)


class _FileLock:
    def __init__(self, fd: int, path: str):
        self._fd = fd
        self._path = path

    def forget(self) -> None:
        """The upload is gone: remove the lock file (still held, so no one is inside)."""
        try:
            os.unlink(self._path)
        except FileNotFoundError:
            pass

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class AdvisoryLocks:
    """One writer per upload across nodes: a PostgreSQL session-level advisory lock
    (``pg_try_advisory_lock``) held on a connection of its own while a request writes.

    Why not a lease column: a lease outlives a worker killed by ``kill -9`` until it
    expires, and the upload answers 423 meanwhile (tus clients give up after a few
    seconds of retries); a lease short enough for them would have to be renewed while a
    chunk streams, and a worker paused longer than that would lose it mid-chunk. Why
    not ``SELECT ... FOR UPDATE NOWAIT``: a transaction held open for a whole chunk,
    around the offset's own commit. PostgreSQL releases an advisory lock when its
    connection closes: at once when a worker dies (the kernel closes its sockets), and
    within about a minute when a whole node vanishes (the keepalives set below).
    Needs session pooling between the app and PostgreSQL (not PgBouncer's transaction
    mode).
    """

    # The server probes a silent client after 30 s, every 10 s, 3 times: a vanished node
    # holds an upload for about a minute, not for the kernel's default two hours.
    _KEEPALIVES = "SET tcp_keepalives_idle = 30; SET tcp_keepalives_interval = 10; SET tcp_keepalives_count = 3"

    def __init__(self, engine: Callable):
        self._engine = engine

    @staticmethod
    def key(upload_id: str) -> int:
        """The lock's 64-bit key, from the upload id (in a namespace of its own)."""
        if not UPLOAD_ID.match(upload_id):
            raise ValueError("not an upload id")
        digest = hashlib.sha256(b"vimeo_api tus upload " + upload_id.encode()).digest()
        return int.from_bytes(digest[:8], "big", signed=True)

    def acquire(self, upload_id: str) -> "_AdvisoryLock":
        """The upload's lock, or ``UploadLocked`` at once when another holds it."""
        key = self.key(upload_id)
        conn = self._engine().connect().execution_options(isolation_level="AUTOCOMMIT")
        try:
            got = conn.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": key}).scalar()
            if got:
                conn.exec_driver_sql(self._KEEPALIVES)
        except BaseException:
            conn.invalidate()
            conn.close()
            raise
        if not got:
            conn.close()
            raise UploadLocked(upload_id)
        return _AdvisoryLock(conn, key)


class _AdvisoryLock:
    def __init__(self, conn, key: int):
        self._conn = conn
        self._key = key

    def forget(self) -> None:
        """Nothing stays behind an advisory lock."""

    def release(self) -> None:
        if self._conn is None:
            return
        conn, self._conn = self._conn, None
        try:
            conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": self._key})
        except Exception:
            # The session may still hold the lock: close it rather than pool it.
            conn.invalidate()
        finally:
            conn.close()
