"""Where bytes live: one small interface (``Storage``), chosen once at start-up.

Every caller goes through it and none touches a path: write a stream atomically
(``new_upload`` / ``adopt``, then ``place``, which knows the SHA-256 and size), open a
blob (with a byte range), delete, exists, stat, iterate stored blobs, and how nginx
reaches a blob (``accel_headers``, ``nginx_file``, ``nginx_fetch``). ``LocalStorage``
keeps content once per SHA-256 under ``blobs/ab/cd/<sha256>``; uploads stream into
``tmp/`` on the same filesystem so that placing them is a rename, never a copy. No path
here is ever built from anything a client sent: only from hashes and random names.

``init_app`` picks the backend by ``STORAGE_URL``'s scheme among the backends the app
factory hands it (``s3://bucket/prefix``: vimeo_api/storage_s3.py); no URL means the
local directory ``STORAGE_DIR``. This is the one place the choice is made.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import BinaryIO
from urllib.parse import quote, urlsplit

from flask import Flask, current_app

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
CHUNK = 1024 * 1024
# Stored bytes are the service's own (password-protected files included): readable by its
# user and group (nginx runs as the same user; a backup group may read), never by others.
FILE_MODE = 0o640
DIR_MODE = 0o750
# Where nginx writes raw upload bodies below the storage (nginx.conf's upload location,
# rendered by deploy/stack.py): the app adopts them (offload.py); the sweep removes what a
# crash left.
BODY_DIR = "nginx-body"
# nginx.conf's internal locations for X-Accel-Redirect: the blobs, and the same blobs
# where nginx ignores a Range (an answer the app decided is the whole file).
ACCEL_PREFIX = "/_vimeo_blobs/"
ACCEL_WHOLE_PREFIX = "/_vimeo_whole/"


class StorageUnavailable(OSError):
    """The store could not be reached or refused a call: the request answers 503 with
    Retry-After (errors.py), a task retries (it retries on OSError), ``files verify``
    reports the blob unreadable. The message names the call, never a key or endpoint."""


@dataclass(frozen=True)
class BlobStat:
    """What a stored blob's size and modification time are."""

    size: int
    mtime: float


class Upload:
    """A sink the bytes of one upload are written to while they are hashed and counted;
    ``Storage.place`` makes it visible under its SHA-256. Closing it unplaced discards
    everything it wrote (a failed or cut-off upload leaves nothing)."""

    size: int
    placed: bool

    def write(self, data) -> int:
        raise NotImplementedError

    def copy_from(self, stream) -> None:
        """Copy a body stream in chunks (memory stays flat whatever the size)."""
        raise NotImplementedError

    @property
    def sha256(self) -> str:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Storage:
    """What the rest of the app may ask of a storage backend."""

    # Whether nginx, sending a blob (accel_headers), knows its modification time: it
    # re-checks If-Unmodified-Since against it before the app's headers are added. The
    # local blobs' mtime is never later than the Last-Modified of a file using them; a
    # bucket's answer gives nginx nothing it may use, so the app sends those answers.
    nginx_knows_mtime = False

    def new_upload(self) -> Upload:
        """A sink that hashes and counts what is written; closing it unplaced discards it."""
        raise NotImplementedError

    def adopt(self, path: str) -> Upload:
        """A complete body file another process (nginx) wrote on this machine; the upload
        owns it from then on."""
        raise NotImplementedError

    def place(self, upload: Upload, mtime: float) -> bool:
        """Make a finished upload visible under its SHA-256; False when already stored."""
        raise NotImplementedError

    def open(self, sha256: str, start: int = 0, stop: int | None = None) -> BinaryIO:
        """The blob's bytes [start, stop) as a readable stream (FileNotFoundError if absent)."""
        raise NotImplementedError

    def delete(self, sha256: str) -> bool:
        raise NotImplementedError

    def exists(self, sha256: str) -> bool:
        raise NotImplementedError

    def stat(self, sha256: str) -> BlobStat | None:
        raise NotImplementedError

    def iter_blobs(self) -> Iterator[str]:
        raise NotImplementedError

    def remove_stale_uploads(self, older_than: float) -> int:
        raise NotImplementedError

    def check(self) -> None:
        """Raise when the storage cannot take a write (the readiness probe)."""
        raise NotImplementedError

    def free_bytes(self) -> int | None:
        """Bytes an upload may still take on the storage, None when it cannot tell."""
        return None

    def accel_headers(self, sha256: str, *, whole: bool = False) -> dict[str, str]:
        """The headers of an X-Accel-Redirect answer by which nginx sends this blob
        (``whole``: nginx must ignore the request's Range); FileNotFoundError when the
        blob is not stored, so that missing bytes cost no download."""
        raise NotImplementedError

    def nginx_file(self, sha256: str) -> str | None:
        """A local file nginx may serve for this blob (a fast-path grant points at it),
        or None when nginx cannot reach the blob as a file."""
        return None

    def nginx_fetch(self, sha256: str) -> dict[str, str] | None:
        """Headers that let nginx fetch this blob over HTTP itself (a presigned GET of a
        bucket), for the fast path of a storage nginx cannot read as files; None when
        nginx reads the blobs as files (``nginx_file``)."""
        return None


BackendFactory = Callable[[Mapping], Storage]


def init_app(app: Flask, backends: Mapping[str, BackendFactory] | None = None) -> None:
    """Choose the backend once, at start-up: ``STORAGE_URL``'s scheme names one of
    ``backends`` (the app factory wires them: ``{"s3": S3Storage.from_config}``), built
    from the app's settings; no URL, the local directory ``STORAGE_DIR``. With
    ``STORAGE_LOCAL_FALLBACK`` (a migration from local disk, README) blobs the backend
    does not have yet are read from ``STORAGE_DIR``."""
    cfg = app.config
    local = LocalStorage(cfg["STORAGE_DIR"])
    url = cfg.get("STORAGE_URL")
    if not url:
        chosen: Storage = local
    else:
        scheme = urlsplit(str(url)).scheme
        factory = (backends or {}).get(scheme)
        if factory is None:
            known = ", ".join(f"{name}://" for name in sorted(backends or {})) or "none"
            raise ValueError(f"STORAGE_URL: no storage backend for {scheme or 'its'} scheme (known: {known})")
        chosen = factory(cfg)
        if cfg.get("STORAGE_LOCAL_FALLBACK"):
            chosen = FallbackStorage(chosen, local)
    app.extensions["vimeo_storage"] = chosen


def current() -> Storage:
    """The current app's storage."""
    return current_app.extensions["vimeo_storage"]


class UploadFile(Upload):
    """A temporary file on the storage filesystem that hashes what is written to it.

    werkzeug's multipart parser writes file parts straight into it (see uploads.py), raw
    bodies are copied into it chunk by chunk; either way the bytes are read once. Closing
    it without ``placed`` set removes it, so a failed or cut-off upload leaves nothing.
    """

    def __init__(self, directory: str):
        self.path = os.path.join(directory, secrets.token_hex(16) + ".part")
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_CLOEXEC, 0o600)
        self._file = os.fdopen(fd, "w+b", buffering=CHUNK)
        self._hash = hashlib.sha256()
        self.size = 0
        self.placed = False

    @classmethod
    def adopt(cls, path: str) -> "UploadFile":
        """Wrap a body file another process (nginx) already wrote; it is hashed by reading."""
        self = cls.__new__(cls)
        self.path = path
        self._file = open(path, "r+b", buffering=0)
        self._hash = hashlib.sha256()
        self.size = 0
        self.placed = False
        while chunk := self._file.read(CHUNK):
            self._hash.update(chunk)
            self.size += len(chunk)
        return self

    # The file-object methods werkzeug's form parser and FileStorage use.
    def write(self, data: bytes) -> int:
        self._hash.update(data)
        self.size += len(data)
        return self._file.write(data)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._file.seek(offset, whence)

    def read(self, n: int = -1) -> bytes:
        return self._file.read(n)

    def tell(self) -> int:
        return self._file.tell()

    def flush(self) -> None:
        self._file.flush()

    def copy_from(self, stream) -> None:
        """Copy a body stream in chunks (memory stays flat whatever the size)."""
        while chunk := stream.read(CHUNK):
            self.write(chunk)

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    def finish(self) -> None:
        """Make the bytes durable before they are renamed into place."""
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        """Release the file; one that was not placed is removed, whatever happens.

        Closing flushes what is still buffered, which fails on a full disk (ENOSPC): for
        bytes being discarded that failure is moot, and raising it here (the request's
        teardown) dropped the connection instead of the 507 already answered, and left
        the temporary file behind for hours.
        """
        try:
            if not self._file.closed:
                self._file.close()
        except OSError:
            if self.placed:
                raise
        finally:
            if not self.placed:
                try:
                    os.unlink(self.path)
                except FileNotFoundError:
                    pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class LocalStorage(Storage):
    """Blobs on a local directory, plus the temporary area uploads stream into."""

    nginx_knows_mtime = True

    def __init__(self, root: str):
        self.root = root
        self.tmp_dir = os.path.join(root, "tmp")
        self.blob_dir = os.path.join(root, "blobs")
        self.body_dir = os.path.join(root, BODY_DIR)

    def ensure_dirs(self) -> None:
        os.makedirs(self.root, mode=DIR_MODE, exist_ok=True)
        # A storage made by an older version (0755) is closed to others here: what is
        # below a closed directory cannot be reached, whatever its own mode.
        if os.stat(self.root).st_mode & 0o007:
            os.chmod(self.root, DIR_MODE)
        os.makedirs(self.tmp_dir, mode=0o700, exist_ok=True)
        os.makedirs(self.blob_dir, mode=DIR_MODE, exist_ok=True)

    def new_upload(self) -> UploadFile:
        self.ensure_dirs()
        return UploadFile(self.tmp_dir)

    def blob_path(self, sha256: str) -> str:
        if not _SHA256.match(sha256):
            raise ValueError("not a sha256 hex digest")
        return os.path.join(self.blob_dir, sha256[:2], sha256[2:4], sha256)

    def accel_path(self, sha256: str, *, whole: bool = False) -> str:
        """The X-Accel-Redirect target of nginx.conf's internal locations for this blob."""
        # nginx percent-decodes this value and cuts it at "?": encode it.
        below_blobs = os.path.relpath(self.blob_path(sha256), self.blob_dir)
        return quote((ACCEL_WHOLE_PREFIX if whole else ACCEL_PREFIX) + below_blobs)

    def accel_headers(self, sha256: str, *, whole: bool = False) -> dict[str, str]:
        if not self.exists(sha256):
            raise FileNotFoundError(sha256)
        return {"X-Accel-Redirect": self.accel_path(sha256, whole=whole)}

    def nginx_file(self, sha256: str) -> str:
        return self.blob_path(sha256)

    def exists(self, sha256: str) -> bool:
        return os.path.exists(self.blob_path(sha256))

    def stat(self, sha256: str) -> BlobStat | None:
        try:
            st = os.stat(self.blob_path(sha256))
        except FileNotFoundError:
            return None
        return BlobStat(st.st_size, st.st_mtime)

    def adopt(self, path: str) -> "UploadFile":
        return UploadFile.adopt(path)

    def place(self, upload: UploadFile, mtime: float) -> bool:
        """Move a finished upload into place under its hash. Returns False when the same
        content was already stored (the temporary file is then dropped).

        The caller holds the blob's row lock, so no release can run in between. The
        blob's mtime is set to ``mtime`` (the first upload's Last-Modified, whole
        seconds): nginx compares If-Unmodified-Since with it, and it must never be later
        than the Last-Modified of any file using the blob.
        """
        target = self.blob_path(upload.sha256)
        if os.path.exists(target):
            upload.close()
            return False
        upload.finish()
        make_dirs(os.path.dirname(target))
        os.chmod(upload.path, FILE_MODE)
        os.utime(upload.path, (mtime, mtime))
        os.replace(upload.path, target)
        upload.placed = True
        upload.close()
        _fsync_dir(os.path.dirname(target))
        return True

    def open(self, sha256: str, start: int = 0, stop: int | None = None) -> BinaryIO:
        """A real file (seekable, so the app can sendfile it) positioned at ``start``;
        ``stop`` is the caller's to respect."""
        blob = open(self.blob_path(sha256), "rb")
        if start:
            blob.seek(start)
        return blob

    def delete(self, sha256: str) -> bool:
        try:
            os.unlink(self.blob_path(sha256))
            return True
        except FileNotFoundError:
            return False

    def iter_blobs(self) -> Iterator[str]:
        """Every stored hash (for the orphan sweep and ``files verify``)."""
        for dirpath, _dirs, names in os.walk(self.blob_dir):
            for name in names:
                if _SHA256.match(name):
                    yield name

    def remove_stale_uploads(self, older_than: float) -> int:
        """Delete temporary upload files left by killed processes, and raw bodies nginx
        left in ``nginx-body/`` when it or the app died mid-request; returns how many."""
        removed = 0
        cutoff = time.time() - older_than
        entries = []
        for directory in (self.tmp_dir, self.body_dir):
            try:
                entries += os.scandir(directory)
            except FileNotFoundError:
                pass
        for entry in entries:
            try:
                if entry.is_file() and entry.stat().st_mtime < cutoff:
                    os.unlink(entry.path)
                    removed += 1
            except FileNotFoundError:
                pass
        return removed

    def free_bytes(self) -> int:
        self.ensure_dirs()
        st = os.statvfs(self.root)
        # f_bavail: what an unprivileged writer may use (root's reserve excluded).
        return st.f_bavail * st.f_frsize

    def check(self) -> None:
        self.ensure_dirs()
        with self.new_upload() as probe:
            probe.write(b"ok")
            probe.finish()


def make_dirs(path: str, mode: int = DIR_MODE) -> None:
    """``os.makedirs`` with ``mode`` for every directory it makes (it gives the mode to
    the last one only, and the umask's to those above it)."""
    if os.path.isdir(path):
        return
    parent = os.path.dirname(path)
    if parent != path:
        make_dirs(parent, mode)
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        pass


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FallbackStorage(Storage):
    """A backend (the bucket) that reads what it does not hold yet from the local
    directory the deployment used before: the switch from local disk to a bucket
    (``manage.py storage migrate``, README) then never fails a read, whichever blobs have
    been copied so far. Everything is written to the backend; a deletion removes both
    copies; the orphan sweep and the stale-upload sweep look at both."""

    def __init__(self, primary: Storage, fallback: "LocalStorage"):
        self.primary = primary
        self.fallback = fallback

    def __repr__(self) -> str:
        return f"FallbackStorage({self.primary!r}, local fallback)"

    def new_upload(self) -> Upload:
        return self.primary.new_upload()

    def adopt(self, path: str) -> Upload:
        return self.primary.adopt(path)

    def place(self, upload: Upload, mtime: float) -> bool:
        return self.primary.place(upload, mtime)

    def open(self, sha256: str, start: int = 0, stop: int | None = None) -> BinaryIO:
        try:
            return self.primary.open(sha256, start, stop)
        except FileNotFoundError:
            return self.fallback.open(sha256, start, stop)

    def delete(self, sha256: str) -> bool:
        deleted = self.primary.delete(sha256)
        return self.fallback.delete(sha256) or deleted

    def exists(self, sha256: str) -> bool:
        return self.primary.exists(sha256) or self.fallback.exists(sha256)

    def stat(self, sha256: str) -> BlobStat | None:
        return self.primary.stat(sha256) or self.fallback.stat(sha256)

    def iter_blobs(self) -> Iterator[str]:
        yield from self.primary.iter_blobs()
        yield from self.fallback.iter_blobs()

    def remove_stale_uploads(self, older_than: float) -> int:
        return self.primary.remove_stale_uploads(older_than) + self.fallback.remove_stale_uploads(older_than)

    def check(self) -> None:
        self.primary.check()

    def accel_headers(self, sha256: str, *, whole: bool = False) -> dict[str, str]:
        try:
            return self.primary.accel_headers(sha256, whole=whole)
        except FileNotFoundError:
            return self.fallback.accel_headers(sha256, whole=whole)

    def nginx_file(self, sha256: str) -> str | None:
        return self.primary.nginx_file(sha256)

    def nginx_fetch(self, sha256: str) -> dict[str, str] | None:
        # The fast path asks the backend; a blob only the fallback holds answers 404
        # there, and nginx hands the request to the app, which sends it (accel_headers).
        return self.primary.nginx_fetch(sha256)
