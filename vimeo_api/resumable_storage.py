"""Where the bytes of unfinished resumable uploads live: one small interface of their own.

``LocalResumableStorage`` keeps each upload as one file, ``<STORAGE_DIR>/resumable/<id>``,
on the filesystem of the blobs, appended to chunk by chunk and placed by a hard link
when complete (so placing is a rename, never a copy). The interface is what the domain
(resumable.py) needs and what an object-storage version could offer too, gathering
chunks into multipart parts of at least 5 MiB:

- ``create(upload_id)`` makes the empty upload;
- ``open_resumable(upload_id)`` takes the upload's lock and returns a handle with
  ``append(stream, offset, limit, observers) -> new_offset``, ``truncate(offset)``,
  ``length()``, ``read(start, stop)``, ``finish(sha256, size) -> upload`` (what
  ``LocalStorage.place`` accepts) and ``discard()``;
- ``iter_uploads()`` and ``free_space()`` for the sweep and the limits.

The lock is ``flock`` on the data file: the kernel releases it when the process holding
it dies, even by ``kill -9``, and it excludes other processes (gunicorn's workers) and
other threads alike, since each ``open`` is its own open file description. A lease in
the database would outlive a killed worker and block its upload until the lease ran out.

Upload ids are 32 lowercase hex characters made by the app (checked here again); no
path is built from anything else.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import secrets
from collections.abc import Iterable, Iterator

from .storage import CHUNK, Storage

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

    def __init__(self, fd: int, path: str, tmp_dir: str, storage: Storage):
        self._fd = fd
        self.path = path
        self._tmp_dir = tmp_dir
        self._storage = storage

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

    def finish(self, sha256: str, size: int):
        """The complete upload, ready to be placed under its hash: a hard link to the data
        file when the blobs are on this disk; else the link streamed into the storage
        (``adopt``, which hashes it again on the way: checked against ``sha256``)."""
        os.makedirs(self._tmp_dir, mode=0o700, exist_ok=True)
        link = os.path.join(self._tmp_dir, secrets.token_hex(16) + ".part")
        os.link(self.path, link)
        if self._storage.nginx_file(sha256) is not None:
            return FinishedUpload(link, sha256, size)
        upload = self._storage.adopt(link)
        if (upload.sha256, upload.size) != (sha256, size):
            upload.close()
            raise OSError(errno.EIO, "the stored upload does not hash to what its chunks did")
        return upload

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
    """Unfinished uploads under ``<STORAGE_DIR>/resumable/``: beside the blobs on local
    disk; in the node's scratch space when the blobs are in a bucket, where the finished
    upload is then streamed (``Storage.adopt``)."""

    def __init__(self, root: str, storage: Storage):
        self.root = root
        self.storage = storage
        self.directory = os.path.join(root, "resumable")
        self.tmp_dir = os.path.join(root, "tmp")

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
            fd = os.open(self.path(upload_id), os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            raise UploadMissing(upload_id) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UploadLocked(upload_id) from None
        except BaseException:
            os.close(fd)
            raise
        # Removed (terminated, swept) between our open and our lock: its name is gone.
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(self.path(upload_id)))
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            raise UploadMissing(upload_id)
        return LocalResumable(fd, self.path(upload_id), self.tmp_dir, self.storage)

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
        os.makedirs(self.root, exist_ok=True)
        stat = os.statvfs(self.root)
        return stat.f_bavail * stat.f_frsize


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
