"""Where bytes live when they live in a bucket: the storage interface over S3.

The same contract as the local directory (vimeo_api/storage.py): content is stored once
per SHA-256 under ``<prefix>blobs/ab/cd/<sha256>``, and an upload becomes visible there
only once it is complete. The hash is known only at the end, so an upload streams, as an
S3 multipart upload, to a temporary key ``<prefix>tmp/<random>`` while it is hashed, and
``place`` then copies it server-side to its content address and deletes the temporary
object. No key is ever built from anything a client sent: only from hashes and random
names. Only standard S3 calls are used (AWS S3, MinIO, Ceph RGW, R2, B2, rclone).

Every call to the store has a connect and a read timeout and a bounded number of
attempts; every failure to talk to it raises ``StorageUnavailable`` so that the app can
answer 503. What the S3 servers used in tests do differently from AWS, and how this
module copes, is written down in deploy/S3-NOTES.md.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import math
import os
import re
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from urllib.parse import urlsplit

import botocore.session
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from botocore.loaders import Loader

from .storage import BlobStat, Storage, StorageUnavailable, Upload

log = logging.getLogger(__name__)

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
# S3's bucket naming rules (the subset every S3-compatible store accepts).
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
# An operator's key prefix: plain path segments, so that no store (rclone maps keys to
# files and refuses "." / ".." / "//") reads it differently from another.
_PREFIX_SEGMENT = re.compile(r"^[A-Za-z0-9_.=-]{1,128}$")

MiB = 1024 * 1024
GiB = 1024 * MiB
# S3's multipart rules: every part but the last at least 5 MiB, at most 10,000 parts.
MIN_PART_SIZE = 5 * MiB
MAX_PARTS = 10_000
# 8 MiB parts: the size boto3's transfer manager and the AWS CLI use, comfortably above
# S3's 5 MiB minimum so a request's fixed cost is small against its bytes, while one
# upload holds at most about two parts in memory (the part being filled and the one being
# sent): ~16 MiB per upload, flat whatever the file size. 10,000 parts of 8 MiB allow
# 78 GiB, far above any MAX_UPLOAD_SIZE this product is run with.
DEFAULT_PART_SIZE = 8 * MiB
# What a raw body read by the app is copied through on its way to the spool.
SPOOL_CHUNK = 256 * 1024
# CopyObject copies at most 5 GiB in one call; larger objects are copied part by part
# with UploadPartCopy. Each copied part is at most 5 GiB too; 512 MiB parts keep the
# number of requests for a 100 GiB object at 200 (and under S3's 10,000 up to 5 TiB).
MAX_SINGLE_COPY = 5 * GiB
DEFAULT_COPY_PART_SIZE = 512 * MiB
# A server-side copy or completion of a large object may take minutes before the store
# answers; the ordinary read timeout is for detecting a store that hangs.
SLOW_CALL_READ_TIMEOUT = 300.0
# Presigned URLs: SigV4 allows at most 7 days.
MAX_PRESIGN_SECONDS = 7 * 24 * 3600
# The presigned GETs nginx fetches blobs with (accel_headers, nginx_fetch) are used at
# once, or within the second a fast-path answer is cached: five minutes only absorb a
# clock difference between the nodes and the store.
DEFAULT_PRESIGN_SECONDS = 300
# nginx.conf's internal locations that proxy a presigned GET of the bucket: the blob with
# the request's Range cut by nginx, and the same where nginx must ignore the Range.
ACCEL_S3 = "/_vimeo_s3"
ACCEL_S3_WHOLE = "/_vimeo_s3_whole"

# botocore's table of every AWS service's regional endpoints (its endpoints.json) takes
# about 7 MiB once parsed, and every session loads and keeps it whole although an S3
# client only ever looks up S3's entry (botocore issue #3078). A short-lived child process
# parses it and hands back the table cut to S3 (about 15 KB) with the path it came from,
# and the session's data loader (a public botocore component) answers that for
# "endpoints", so a worker never holds, nor fragments its heap with, the rest. The
# child's cost, about 0.3 s, is paid once per process at its first client. Hand-written
# because botocore has no setting for it.
_ENDPOINTS_FOR_S3 = r"""
import json, os, sys
from botocore.loaders import create_loader
table, path = create_loader(os.environ.get("AWS_DATA_PATH")).load_data_with_path("endpoints")
table["partitions"] = [
    dict(partition, services={name: entry for name, entry in partition.get("services", {}).items() if name == "s3"})
    for partition in table["partitions"]
]
sys.stdout.write(json.dumps({"table": table, "path": path}))
"""
_endpoints_lock = threading.Lock()
_endpoints: tuple | None = None


def _s3_endpoint_table() -> tuple[dict, str] | None:
    """botocore's endpoint table with S3's entries only and the file it came from, read
    once per process (and inherited by forked children); None when the child could not
    produce it, and the session then loads botocore's own table as usual."""
    global _endpoints
    with _endpoints_lock:
        if _endpoints is None:
            try:
                out = subprocess.run([sys.executable, "-c", _ENDPOINTS_FOR_S3], check=True, capture_output=True,
                                     timeout=60).stdout
                answer = json.loads(out)
                _endpoints = (answer["table"], answer["path"])
            except (OSError, subprocess.SubprocessError, ValueError, KeyError) as exc:
                log.warning("S3 endpoint table: botocore's full table is used (%s)", type(exc).__name__)
                _endpoints = ()
        return _endpoints or None


class _S3EndpointsLoader(Loader):
    """botocore's data loader, except that "endpoints" is the table cut to S3 (above)."""

    def __init__(self, endpoints: tuple[dict, str], search_path: str | None):
        extra = [os.path.expanduser(os.path.expandvars(p)) for p in (search_path or "").split(os.pathsep) if p]
        super().__init__(extra_search_paths=extra)
        self._s3_endpoints = endpoints

    def load_data_with_path(self, name):
        if name == "endpoints":
            return self._s3_endpoints
        return super().load_data_with_path(name)


def _botocore_session():
    """A botocore session whose endpoint table knows S3 only (see above). botocore
    directly, not boto3: its resource layer and transfer manager are not used here and
    cost another 2 MiB per process."""
    session = botocore.session.Session()
    endpoints = _s3_endpoint_table()
    if endpoints is not None:
        session.register_component(
            "data_loader", _S3EndpointsLoader(endpoints, session.get_config_variable("data_path"))
        )
    return session


def _check_sha256(sha256: str) -> str:
    if not isinstance(sha256, str) or not _SHA256.match(sha256):
        raise ValueError("not a sha256 hex digest")
    return sha256


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def _no_such_upload(exc: BaseException | None) -> bool:
    """Whether the store answered that it does not know the multipart upload."""
    return isinstance(exc, ClientError) and _error_code(exc) == "NoSuchUpload"


@contextmanager
def _store_errors(action: str):
    """Every failure of a call to the store, as ``StorageUnavailable``.

    The message names the action and the store's error code only: botocore's own
    messages can carry the endpoint and key, which are no business of a client.
    """
    try:
        yield
    except StorageUnavailable:
        raise  # an OSError already said which call failed
    except ClientError as exc:
        raise StorageUnavailable(f"{action} failed: {_error_code(exc) or _status(exc)}") from exc
    except (BotoCoreError, OSError) as exc:
        raise StorageUnavailable(f"{action} failed: {type(exc).__name__}") from exc


class S3Upload(Upload):
    """A sink that streams what is written to it into the bucket while hashing it.

    werkzeug's multipart parser writes a file part into it with ``write`` and then calls
    ``seek(0)`` (werkzeug/formparser.py, ``MultiPartParser.parse``); raw bodies are copied
    in with ``copy_from``. Bytes are sent as parts of a multipart upload to a temporary
    key as soon as a whole part has arrived, so memory stays flat; an upload smaller than
    one part never starts a multipart upload and is sent with one PutObject by ``place``.

    Closing it without ``place`` aborts the multipart upload, so a failed or cut-off
    upload leaves nothing in the bucket.

    Where the part being filled waits: with the storage's ``scratch_dir`` (the node's
    local scratch space, ``STORAGE_DIR``), in an unnamed temporary file there, sent from
    the file like a body file nginx wrote (``copy_file``), so a multipart form or a raw
    body read by the app holds no part in memory (a part of 8 MiB is what would push a
    worker over 100 MiB; deploy/S3-NOTES.md). Without one, and for a resumed (tus)
    upload, whose tail its owner reads back, in one buffer of the part size, allocated
    once per upload and handed to botocore as it is.
    """

    def __init__(self, storage: "S3Storage"):
        self._storage = storage
        self.key = storage.tmp_key(secrets.token_hex(16))
        self._hash = hashlib.sha256()
        self._sha256: str | None = None  # told by the owner when it hashes (resumed)
        self.part_size = storage.part_size
        self._part: bytearray | None = None  # allocated at the first byte
        self._fill = 0  # bytes of the current part in self._part (or the spool)
        # The part being filled on the scratch disk instead of in memory (see above).
        self._spool_dir = storage.scratch_dir
        self._spool = None
        self._upload_id: str | None = None
        self._parts: list[dict] = []
        self._position = 0
        self._failed = False
        # A resumed upload's bytes belong to its resumable upload until it is discarded.
        self._keep_on_close = False
        # A resumed upload whose multipart upload an earlier attempt completed: every
        # byte is in the object at ``key`` already, nothing more is sent.
        self._completed = False
        self.size = 0
        self.placed = False
        self.closed = False

    @classmethod
    def resumed(cls, storage: "S3Storage", key: str, upload_id: str | None, parts: list[dict], size: int,
                part_size: int, rest: bytes = b"") -> "S3Upload":
        """The sink of a resumable (tus) upload, vimeo_api/resumable_s3.py: its multipart
        upload ``upload_id`` at ``key`` already holds ``parts`` (every one ``part_size``
        bytes), ``rest`` is what follows them up to ``size``. Bytes written go on from
        there; they are not hashed here (the owner hashes them and sets ``sha256``), and
        closing leaves the multipart upload alone (its owner discards it)."""
        self = cls(storage)
        self.key = key
        self._hash = None
        self._spool_dir = None  # its owner reads the tail back (``rest``)
        self.part_size = int(part_size)
        self._upload_id = upload_id
        self._parts = [dict(part) for part in parts]
        self._keep_on_close = True
        self.size = self._position = int(size)
        if rest:
            if len(rest) >= self.part_size:
                raise ValueError("the rest of a resumed upload is shorter than one part")
            buffer = self._part_buffer()
            buffer[:len(rest)] = rest
            self._fill = len(rest)
        return self

    # -- the file-object methods werkzeug's parser and FileStorage use ----------------

    def write(self, data) -> int:
        """Hash and count ``data``; send a part to the bucket whenever one is full."""
        self._check_appendable()
        view = memoryview(data).cast("B")
        n = len(view)
        if self._hash is not None:
            self._hash.update(view)
        self.size += n
        self._position = self.size
        if self._spooling():
            self._spool_in(view)
            return n
        while view:
            part = self._part_buffer()
            take = min(len(part) - self._fill, len(view))
            part[self._fill:self._fill + take] = view[:take]
            self._fill += take
            view = view[take:]
            self._send_if_full()
        return n

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        """Only moves the position that ``tell`` reports; the bytes cannot be read back.

        werkzeug seeks to 0 after writing a part, before handing the stream to
        ``FileStorage``; a later ``write`` must then seek back to the end.
        """
        if whence == io.SEEK_SET:
            target = offset
        elif whence == io.SEEK_CUR:
            target = self._position + offset
        elif whence == io.SEEK_END:
            target = self.size + offset
        else:
            raise ValueError(f"invalid whence {whence!r}")
        if target < 0:
            raise ValueError("negative seek position")
        self._position = target
        return target

    def tell(self) -> int:
        return self._position

    def seekable(self) -> bool:
        return True

    def writable(self) -> bool:
        return not self.closed

    def readable(self) -> bool:
        return False

    def read(self, n: int = -1) -> bytes:
        raise io.UnsupportedOperation("an upload to the bucket cannot be read back; open the blob")

    def flush(self) -> None:
        """Nothing to do: a part is sent as soon as it is full, the rest by ``place``."""

    def copy_from(self, stream, chunk_size: int = MiB) -> None:
        """Copy a body stream in chunks of at most ``chunk_size`` (memory stays flat
        whatever the size), straight into the part buffer when the stream has
        ``readinto`` (files, werkzeug's request stream)."""
        readinto = getattr(stream, "readinto", None)
        if readinto is None or self._spooling():
            if readinto is None:
                while chunk := stream.read(chunk_size):
                    self.write(chunk)
                return
            with memoryview(bytearray(min(chunk_size, SPOOL_CHUNK))) as buffer:
                while n := readinto(buffer):
                    self.write(buffer[:n])
            return
        self._check_appendable()
        while True:
            part = self._part_buffer()
            end = min(len(part), self._fill + chunk_size)
            with memoryview(part) as whole:
                window = whole[self._fill:end]
                n = readinto(window) or 0
                if self._hash is not None:
                    self._hash.update(window[:n])
                window.release()
            if not n:
                return
            self._fill += n
            self.size += n
            self._position = self.size
            self._send_if_full()

    def copy_file(self, body) -> None:
        """Copy a regular file on local disk (nginx's body file, ``S3Storage.adopt``) from
        its position to its end. Whole parts go to the bucket straight from the file,
        hashed on the way through one small buffer, so no part is held in memory; only
        what is left after the last whole part (less than a part) is read in, for the one
        request that ends the upload. The file must stay as it is until this returns."""
        self._check_appendable()
        if self._fill or self._hash is None:
            # Bytes already gathered (or a resumed upload): the ordinary path.
            self.copy_from(body, self.part_size)
            return
        start = body.tell()
        left = os.fstat(body.fileno()).st_size - start
        chunk = bytearray(256 * 1024)
        offset = start
        while left >= self.part_size and not (left == self.part_size and not self._parts):
            # (A file of exactly one part is sent with one PutObject, as a smaller one.)
            self._hash_range(body, offset, self.part_size, chunk)
            try:
                self._send_part(_FileRange(body.fileno(), offset, self.part_size))
            except BaseException:
                self._failed = True
                raise
            offset += self.part_size
            left -= self.part_size
            self.size = self._position = offset - start
        self.size = self._position = offset - start
        if self._spooling():
            # The tail goes to the spool, disk to disk, hashed on the way.
            self._hash_range(body, offset, left, chunk)
            spool = self._spool_file()
            copied = 0
            while copied < left:
                n = os.copy_file_range(body.fileno(), spool.fileno(), left - copied, offset + copied)
                if not n:
                    raise OSError("the body file ended before its size")
                copied += n
            self._fill = left
        else:
            rest = bytearray(left)
            if left:
                self._hash_range(body, offset, left, rest)
            self._part, self._fill = rest, left
        self.size = self._position = offset - start + left
        body.seek(offset + left)

    def _hash_range(self, body, offset: int, length: int, buffer: bytearray) -> None:
        """Hash ``length`` bytes of ``body`` from ``offset``, read into ``buffer`` (the
        whole range when the buffer is as long, else one buffer at a time)."""
        fd = body.fileno()
        with memoryview(buffer) as whole:
            while length:
                n = os.preadv(fd, [whole[:min(length, len(whole))]], offset)
                if not n:
                    raise OSError("the body file ended before its size")
                self._hash.update(whole[:n])
                offset += n
                length -= n

    def _spooling(self) -> bool:
        """Whether parts are filled on the scratch disk (see the class)."""
        return self._spool_dir is not None and self._part is None

    def _spool_file(self):
        if self._spool is None:
            # Unnamed (O_TMPFILE where the filesystem has it): nothing to remove after a crash.
            self._spool = tempfile.TemporaryFile(dir=self._spool_dir, buffering=0)
        return self._spool

    def _spool_in(self, view: memoryview) -> None:
        """Append to the spool; send it as a part whenever it holds a whole one."""
        spool = self._spool_file()
        while view:
            take = min(self.part_size - self._fill, len(view))
            written = 0
            while written < take:
                written += os.pwrite(spool.fileno(), view[written:take], self._fill + written)
            self._fill += take
            view = view[take:]
            if self._fill == self.part_size:
                try:
                    self._send_part(_FileRange(spool.fileno(), 0, self.part_size))
                except BaseException:
                    self._failed = True
                    raise
                self._fill = 0

    def _drop_buffers(self) -> None:
        self._part, self._fill = None, 0
        if self._spool is not None:
            spool, self._spool = self._spool, None
            spool.close()

    def _check_appendable(self) -> None:
        if self.closed:
            raise ValueError("write to a closed upload")
        if self._failed:
            raise StorageUnavailable("an earlier part of this upload could not be sent")
        if self._position != self.size:
            # Bytes already sent cannot be rewritten: only appending is possible.
            raise io.UnsupportedOperation("an upload can only be appended to")

    def _part_buffer(self) -> bytearray:
        if self._part is None:
            self._part = bytearray(self.part_size)
        elif len(self._part) < self.part_size:
            # The tail copy_file kept, written on: a whole part's room again.
            self._part += bytearray(self.part_size - len(self._part))
        return self._part

    @property
    def rest(self) -> memoryview:
        """The bytes gathered since the last part was sent (a view of the part buffer)."""
        if self._spooling():
            return memoryview(os.pread(self._spool.fileno(), self._fill, 0) if self._spool else b"")
        return memoryview(self._part_buffer())[:self._fill]

    @property
    def parts(self) -> list[dict]:
        """The parts sent so far, as CompleteMultipartUpload lists them."""
        return [dict(part) for part in self._parts]

    @property
    def upload_id(self) -> str | None:
        """The multipart upload's id, once the first part was sent."""
        return self._upload_id

    def _send_if_full(self) -> None:
        if self._fill < len(self._part):
            return
        try:
            self._send_part(self._part)
        except BaseException:
            # That part is lost: the upload can only be discarded now.
            self._failed = True
            raise
        self._fill = 0

    def _take_rest(self) -> bytearray | bytes:
        """The bytes gathered since the last part was sent, for the one request that ends
        the upload: the part buffer itself, cut to them (no copy of up to a part's size
        beside it; the buffer is not written to again)."""
        if not self._fill:
            return b""
        if self._spool is not None:
            return _FileRange(self._spool.fileno(), 0, self._fill)
        rest, self._part = self._part, None
        del rest[self._fill:]
        return rest

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest() if self._hash is not None else self._sha256

    @sha256.setter
    def sha256(self, value: str) -> None:
        if self._hash is not None:
            raise AttributeError("this upload hashes its own bytes")
        self._sha256 = _check_sha256(value)

    # -- the bucket side -----------------------------------------------------------------

    def _send_part(self, body) -> None:
        if self._completed:
            return
        try:
            self._send_part_now(body)
        except StorageUnavailable as exc:
            if not (self._keep_on_close and _no_such_upload(exc.__cause__) and self._completed_before()):
                raise
            self._completed = True

    def _send_part_now(self, body) -> None:
        storage = self._storage
        if len(self._parts) >= MAX_PARTS:
            raise StorageUnavailable(
                f"upload larger than {MAX_PARTS} parts of {self.part_size} bytes (raise S3_PART_SIZE)"
            )
        client = storage.client
        if self._upload_id is None:
            with _store_errors("CreateMultipartUpload"):
                answer = client.create_multipart_upload(
                    Bucket=storage.bucket, Key=self.key, ContentType="application/octet-stream",
                    ChecksumAlgorithm="CRC32",
                )
            self._upload_id = answer["UploadId"]
        number = len(self._parts) + 1
        with _store_errors("UploadPart"):
            answer = client.upload_part(
                Bucket=storage.bucket, Key=self.key, UploadId=self._upload_id, PartNumber=number, Body=body,
                ChecksumAlgorithm="CRC32",
            )
        part = {"PartNumber": number, "ETag": answer["ETag"]}
        # Each part carries its CRC32 (the multipart upload was created with that
        # algorithm, as boto3's transfer manager does); a store that recorded it wants it
        # back in CompleteMultipartUpload (AWS refuses the completion otherwise).
        for name in ("ChecksumCRC32", "ChecksumCRC32C", "ChecksumSHA1", "ChecksumSHA256", "ChecksumCRC64NVME"):
            if answer.get(name):
                part[name] = answer[name]
        self._parts.append(part)

    def _complete(self) -> None:
        """Send what is buffered as the last part and complete the multipart upload."""
        if self._fill or not self._parts:
            self._send_part(self._take_rest())
            self._fill = 0
        if self._completed:
            self._check_completed()
            return
        try:
            with _store_errors("CompleteMultipartUpload"):
                self._storage.slow_client.complete_multipart_upload(
                    Bucket=self._storage.bucket, Key=self.key, UploadId=self._upload_id,
                    MultipartUpload={"Parts": self._parts},
                )
        except StorageUnavailable as exc:
            if not (self._keep_on_close and _no_such_upload(exc.__cause__) and self._completed_before()):
                raise
            self._completed = True
            self._check_completed()
        # The temporary object now exists in its place: closing deletes it.
        self._upload_id = None

    def _completed_before(self) -> bool:
        """Whether a resumed upload whose multipart upload the store no longer knows was
        completed by an earlier attempt that failed after it (the copy into place, the
        commit, a killed worker): only completing it makes an object at ``key``, and that
        object has every byte, so this attempt only hashes what it is sent again and goes
        on from the copy."""
        return self._storage._head(self.key) is not None

    def _check_completed(self) -> None:
        answer = self._storage._head(self.key)
        if answer is None or int(answer["ContentLength"]) != self.size:
            raise StorageUnavailable("the upload's completed object is not the upload's length")

    @property
    def started(self) -> bool:
        """Whether bytes have been sent to the bucket (a multipart upload is open)."""
        return self._upload_id is not None

    def close(self) -> None:
        """Drop everything unless placed: abort the multipart upload, delete the
        temporary object. Never raises: what a store that is down keeps is removed
        later by ``S3Storage.remove_stale_uploads``."""
        if self.closed:
            return
        self.closed = True
        self._drop_buffers()
        if self._keep_on_close:
            return
        storage = self._storage
        try:
            if self._upload_id is not None:
                upload_id, self._upload_id = self._upload_id, None
                storage._abort(self.key, upload_id)
            elif self._parts and not self.placed:
                # Completed but not copied into place (place failed half-way).
                storage._delete_key(self.key)
        except StorageUnavailable as exc:
            log.warning("could not discard temporary upload %s: %s", self.key.rsplit("/", 1)[-1], exc)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _scratch_dir(directory) -> str | None:
    """``STORAGE_DIR`` as the uploads' scratch space, made when missing; None (parts in
    memory) when it cannot be used."""
    if not directory:
        return None
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as exc:
        log.warning("uploads fill their parts in memory: STORAGE_DIR unusable (%s)", type(exc).__name__)
        return None
    return str(directory)


class _FileRange(io.RawIOBase):
    """``length`` bytes of an open file from ``offset``, as the body of one UploadPart:
    botocore reads it to sign and checksum it and again to send it, seeking back in
    between, so it must be seekable and know its length. Reads go through ``pread`` on the
    shared descriptor, so several ranges of one file never move each other's position."""

    def __init__(self, fd: int, offset: int, length: int):
        super().__init__()
        self._fd, self._offset, self._length, self._at = fd, offset, length, 0

    def __len__(self) -> int:
        return self._length

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._at

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._at, io.SEEK_END: self._length}[whence]
        self._at = min(max(0, base + offset), self._length)
        return self._at

    def readinto(self, buffer) -> int:
        with memoryview(buffer) as view:
            want = min(len(view), self._length - self._at)
            if want <= 0:
                return 0
            n = os.preadv(self._fd, [view[:want]], self._offset + self._at)
        self._at += n
        return n


class _BlobReader(io.RawIOBase):
    """A readable stream over a (ranged) GET of a blob: ``read(n)``, ``close()``.

    Reads straight from the response socket, so memory stays flat. A store that answers
    a ranged GET with the whole object (no Content-Range) is coped with by skipping to
    the start; the length read is always exactly the requested range.
    """

    def __init__(self, body, skip: int, length: int | None):
        super().__init__()
        self._body = body
        self._skip = skip
        self._remaining = length

    def readable(self) -> bool:
        return True

    def _raw_read(self, n: int) -> bytes:
        with _store_errors("GetObject"):
            return self._body.read(n)

    def _skip_to_start(self) -> None:
        while self._skip:
            data = self._raw_read(min(self._skip, MiB))
            if not data:
                raise StorageUnavailable("GetObject failed: the object is shorter than the range")
            self._skip -= len(data)

    def read(self, n: int = -1) -> bytes:
        if self.closed:
            raise ValueError("read from a closed blob")
        self._skip_to_start()
        if self._remaining is not None:
            if self._remaining <= 0:
                return b""
            n = self._remaining if n is None or n < 0 else min(n, self._remaining)
        elif n is None or n < 0:
            n = None
        data = self._raw_read(n)
        if self._remaining is not None:
            if n and not data:
                raise StorageUnavailable("GetObject failed: the object ended before the range")
            self._remaining -= len(data)
        return data

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def readall(self) -> bytes:
        chunks = []
        while chunk := self.read(MiB):
            chunks.append(chunk)
        return b"".join(chunks)

    def close(self) -> None:
        if not self.closed:
            try:
                self._body.close()
            except Exception:  # the connection is discarded either way
                pass
        super().close()


class S3Storage(Storage):
    """Blobs in an S3 bucket under a key prefix, plus the temporary area uploads stream into."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        connect_timeout: float = 3.0,
        read_timeout: float = 10.0,
        max_attempts: int = 3,
        addressing_style: str | None = None,
        part_size: int = DEFAULT_PART_SIZE,
        max_single_copy: int = MAX_SINGLE_COPY,
        copy_part_size: int = DEFAULT_COPY_PART_SIZE,
        list_page_size: int = 1000,
        presign_seconds: int = DEFAULT_PRESIGN_SECONDS,
        scratch_dir: str | None = None,
    ):
        if not _BUCKET.match(bucket or ""):
            raise ValueError(f"not a valid bucket name: {bucket!r}")
        if (access_key_id is None) != (secret_access_key is None):
            raise ValueError("give both S3_ACCESS_KEY_ID and S3_SECRET_ACCESS_KEY, or neither")
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part size must be at least {MIN_PART_SIZE} bytes (S3's minimum)")
        if copy_part_size < MIN_PART_SIZE or copy_part_size > MAX_SINGLE_COPY:
            raise ValueError("copy part size must lie between 5 MiB and 5 GiB")
        if not 1 <= list_page_size <= 1000:
            raise ValueError("list page size must lie between 1 and 1000")
        if addressing_style not in (None, "auto", "path", "virtual"):
            raise ValueError("S3_ADDRESSING_STYLE must be auto, path or virtual")
        if connect_timeout <= 0 or read_timeout <= 0 or max_attempts < 1:
            raise ValueError("S3 timeouts must be positive and S3_MAX_ATTEMPTS at least 1")
        if not 1 <= presign_seconds <= MAX_PRESIGN_SECONDS:
            raise ValueError(f"S3_PRESIGN_SECONDS must lie between 1 and {MAX_PRESIGN_SECONDS}")
        self.bucket = bucket
        self.prefix = _normalise_prefix(prefix)
        self.endpoint_url = endpoint_url or None
        self.region = region or None
        self.part_size = int(part_size)
        self.max_single_copy = int(max_single_copy)
        self.copy_part_size = int(copy_part_size)
        self.list_page_size = int(list_page_size)
        self.connect_timeout = float(connect_timeout)
        self.read_timeout = float(read_timeout)
        self.max_attempts = int(max_attempts)
        self.presign_seconds = int(presign_seconds)
        # Where uploads fill their parts (S3Upload): the node's local scratch space.
        self.scratch_dir = scratch_dir or None
        if addressing_style is None:
            # Custom endpoints (MinIO, rclone, Ceph) are usually reached by path; AWS
            # picks virtual-hosted style itself.
            addressing_style = "path" if self.endpoint_url else "auto"
        self.addressing_style = addressing_style
        self._credentials = (access_key_id, secret_access_key)
        self._clients: dict[str, object] = {}
        self._session = None
        self._clients_pid: int | None = None
        self._clients_lock = threading.Lock()

    @classmethod
    def from_config(cls, cfg: Mapping) -> "S3Storage":
        """Build from settings: ``STORAGE_URL=s3://bucket/prefix``, ``S3_ENDPOINT_URL``,
        ``S3_REGION``, ``S3_ACCESS_KEY_ID``/``S3_SECRET_ACCESS_KEY`` (else the standard
        AWS environment variables, config files or instance role), and the optional
        ``S3_CONNECT_TIMEOUT``, ``S3_READ_TIMEOUT``, ``S3_MAX_ATTEMPTS``,
        ``S3_ADDRESSING_STYLE``, ``S3_PART_SIZE``, ``S3_PRESIGN_SECONDS``. No secret has a
        default."""
        bucket, prefix = parse_storage_url(str(cfg.get("STORAGE_URL") or ""))

        def number(name, default, kind=float):
            value = cfg.get(name)
            return default if value in (None, "") else kind(value)

        return cls(
            bucket,
            prefix,
            endpoint_url=cfg.get("S3_ENDPOINT_URL") or None,
            region=cfg.get("S3_REGION") or None,
            access_key_id=cfg.get("S3_ACCESS_KEY_ID") or None,
            secret_access_key=cfg.get("S3_SECRET_ACCESS_KEY") or None,
            connect_timeout=number("S3_CONNECT_TIMEOUT", 3.0),
            read_timeout=number("S3_READ_TIMEOUT", 10.0),
            max_attempts=number("S3_MAX_ATTEMPTS", 3, int),
            addressing_style=cfg.get("S3_ADDRESSING_STYLE") or None,
            part_size=number("S3_PART_SIZE", DEFAULT_PART_SIZE, int),
            presign_seconds=number("S3_PRESIGN_SECONDS", DEFAULT_PRESIGN_SECONDS, int),
            scratch_dir=_scratch_dir(cfg.get("STORAGE_DIR")),
        )

    def __repr__(self) -> str:  # never the credentials
        return f"S3Storage(bucket={self.bucket!r}, prefix={self.prefix!r}, endpoint_url={self.endpoint_url!r})"

    # -- clients -------------------------------------------------------------------------

    def _client(self, kind: str):
        # One set of clients per process: a client made before gunicorn or Celery forks
        # would share its pooled sockets with the children.
        pid = os.getpid()
        if self._clients_pid == pid:
            client = self._clients.get(kind)
            if client is not None:
                return client
        # Made by one thread at a time: a botocore session is not thread-safe, and the
        # first requests of a busy worker would otherwise each make a session and a client
        # (each parsing botocore's S3 model) and keep one: measured, two workers grew by
        # 35 MiB where one client costs 7.
        with self._clients_lock:
            return self._make_client(kind, pid)

    def _make_client(self, kind: str, pid: int):
        if self._clients_pid != pid:
            self._clients = {}
            self._session = None
            self._clients_pid = pid
        client = self._clients.get(kind)
        if client is None:
            read_timeout, attempts, connect_timeout = self.read_timeout, self.max_attempts, self.connect_timeout
            if kind == "slow":
                read_timeout = max(read_timeout, SLOW_CALL_READ_TIMEOUT)
            elif kind == "probe":
                # The readiness probe: one attempt, short, so /readyz answers at once.
                read_timeout, attempts, connect_timeout = min(read_timeout, 2.0), 1, min(connect_timeout, 2.0)
            config = Config(
                # Explicit: for a custom endpoint botocore may otherwise presign with the
                # legacy SigV2 query string, which rclone and newer stores refuse.
                signature_version="s3v4",
                region_name=self.region,
                connect_timeout=connect_timeout,
                read_timeout=read_timeout,
                retries={"mode": "standard", "total_max_attempts": max(1, attempts)},
                s3={"addressing_style": self.addressing_style},
                tcp_keepalive=True,
                # Checksums on what is sent; none demanded on what is read, since ranged
                # reads from some stores carry the whole object's checksum
                # (deploy/S3-NOTES.md), and files verify re-hashes the content anyway.
                request_checksum_calculation="when_supported",
                response_checksum_validation="when_required",
            )
            if self._session is None:
                # One session for the three clients: each session parses botocore's S3
                # model anew (about 5 MiB), a client of an existing one reuses it.
                self._session = _botocore_session()
            session = self._session
            access_key_id, secret_access_key = self._credentials
            region = self.region or session.get_config_variable("region") or "us-east-1"
            client = session.create_client(
                "s3",
                endpoint_url=self.endpoint_url,
                region_name=region,
                aws_access_key_id=access_key_id,
                aws_secret_access_key=secret_access_key,
                config=config,
            )
            self._clients[kind] = client
        return client

    @property
    def client(self):
        """The botocore client every ordinary call uses (timeouts, bounded retries)."""
        return self._client("main")

    @property
    def slow_client(self):
        """The client for server-side copies and completions, which may take minutes."""
        return self._client("slow")

    # -- keys ------------------------------------------------------------------------------

    def blob_key(self, sha256: str) -> str:
        """The content address of a blob: ``<prefix>blobs/ab/cd/<sha256>``."""
        _check_sha256(sha256)
        return f"{self.prefix}blobs/{sha256[:2]}/{sha256[2:4]}/{sha256}"

    def tmp_key(self, name: str) -> str:
        return f"{self.prefix}tmp/{name}"

    # -- the storage interface -------------------------------------------------------------

    def new_upload(self) -> S3Upload:
        """A writable sink streaming to the bucket (see ``S3Upload``)."""
        return S3Upload(self)

    def adopt(self, path: str) -> S3Upload:
        """Stream a complete body file on local disk (what nginx wrote for a raw PUT) into
        the bucket, hashing it on the way, then remove the local file.

        The upload owns the file from now on, as the local backend's does: it is removed
        whether or not streaming succeeded.
        """
        upload = self.new_upload()
        try:
            with open(path, "rb") as body:
                upload.copy_file(body)
        except BaseException:
            upload.close()
            raise
        finally:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        return upload

    def place(self, upload: S3Upload, mtime: float) -> bool:
        """Make a finished upload visible under its content address. Returns False when
        the same content was already stored (the upload is then discarded).

        The caller holds the blob's row lock, as with the local backend, so no release
        runs in between. ``mtime`` (whole seconds: the first upload's Last-Modified) is
        kept as ``x-amz-meta-mtime``. Raises ``StorageUnavailable`` (and leaves neither
        the blob nor a temporary object behind) when the store fails.
        """
        if upload.closed or upload.placed:
            raise ValueError("this upload is closed")
        if upload._storage is not self:
            raise ValueError("this upload belongs to another storage")
        if upload._failed:
            upload.close()
            raise StorageUnavailable("placing the upload failed: a part could not be sent")
        sha256 = upload.sha256
        target = self.blob_key(sha256)
        try:
            if self._head(target) is not None:
                upload.close()
                return False
            metadata = {"mtime": _format_mtime(mtime)}
            if not upload.started:
                # Smaller than one part: one PutObject straight to the content address,
                # with its SHA-256 for the stores that check it (AWS does).
                with _store_errors("PutObject"):
                    self.client.put_object(
                        Bucket=self.bucket, Key=target, Body=upload._take_rest(),
                        ContentType="application/octet-stream", Metadata=metadata,
                        ChecksumSHA256=base64.b64encode(bytes.fromhex(sha256)).decode("ascii"),
                    )
            else:
                upload._complete()
                self._copy(upload.key, target, upload.size, metadata)
            self._verify_size(target, upload.size)
        except BaseException:
            upload.close()
            raise
        upload.placed = True
        upload.closed = True
        upload._drop_buffers()
        if upload.started or upload._parts:
            try:
                self._delete_key(upload.key)
            except StorageUnavailable as exc:
                # Placed all the same; the sweep removes the temporary object later.
                log.warning("could not delete temporary upload %s: %s", upload.key.rsplit("/", 1)[-1], exc)
        return True

    def open(self, sha256: str, start: int = 0, stop: int | None = None):
        """A readable binary stream of the blob's bytes [start, stop), read from a ranged
        GET as it is consumed (memory stays flat). ``FileNotFoundError`` when absent."""
        key = self.blob_key(sha256)
        if start < 0 or (stop is not None and stop < start):
            raise ValueError("invalid byte range")
        length = None if stop is None else stop - start
        if length == 0:
            return _BlobReader(io.BytesIO(b""), 0, 0)
        params = {"Bucket": self.bucket, "Key": key}
        if start or stop is not None:
            params["Range"] = f"bytes={start}-" + ("" if stop is None else str(stop - 1))
        try:
            answer = self.client.get_object(**params)
        except ClientError as exc:
            if _error_code(exc) == "NoSuchKey" or _status(exc) == 404:
                raise FileNotFoundError(sha256) from None
            if _error_code(exc) == "InvalidRange" or _status(exc) == 416:
                raise ValueError("the range starts beyond the end of the blob") from None
            raise StorageUnavailable(f"GetObject failed: {_error_code(exc) or _status(exc)}") from exc
        except (BotoCoreError, OSError) as exc:
            raise StorageUnavailable(f"GetObject failed: {type(exc).__name__}") from exc
        skip = 0
        if "Range" in params:
            content_range = answer.get("ContentRange") or ""
            match = re.match(r"^bytes (\d+)-(\d+)/", content_range)
            if match:
                if int(match.group(1)) != start:
                    answer["Body"].close()
                    raise StorageUnavailable("GetObject failed: the store answered another range")
            else:
                # The whole object came back: read past the bytes before the range.
                skip = start
        return _BlobReader(answer["Body"], skip, length)

    def delete(self, sha256: str) -> bool:
        """Remove a blob; True when it was there. Deleting a missing blob is no error."""
        key = self.blob_key(sha256)
        existed = self._head(key) is not None
        self._delete_key(key)
        return existed

    def exists(self, sha256: str) -> bool:
        return self._head(self.blob_key(sha256)) is not None

    def stat(self, sha256: str) -> BlobStat | None:
        """The blob's size and modification time, or None when it is absent."""
        answer = self._head(self.blob_key(sha256))
        if answer is None:
            return None
        metadata = {k.lower(): v for k, v in (answer.get("Metadata") or {}).items()}
        try:
            mtime = float(metadata["mtime"])
        except (KeyError, ValueError):
            # Stores that do not keep user metadata (rclone keeps it in memory only) keep
            # the mtime as the object's Last-Modified instead.
            mtime = answer["LastModified"].timestamp()
        return BlobStat(size=int(answer["ContentLength"]), mtime=mtime)

    def list_objects(self, prefix: str) -> Iterator[tuple[str, float]]:
        """(key, Last-Modified as a timestamp) of every object under ``prefix``, listed
        page by page (memory bounded by one page); a failing page raises StorageUnavailable."""
        pages = iter(self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix, PaginationConfig={"PageSize": self.list_page_size}
        ))
        while True:
            with _store_errors("ListObjectsV2"):
                page = next(pages, None)
            if page is None:
                return
            for item in page.get("Contents", ()):
                yield item["Key"], item["LastModified"].timestamp()

    def iter_blobs(self) -> Iterator[str]:
        """Every stored hash, listed page by page (memory bounded by one page)."""
        base = len(self.prefix) + len("blobs/")
        for key, _modified in self.list_objects(f"{self.prefix}blobs/"):
            parts = key[base:].split("/")
            if len(parts) == 3 and _SHA256.match(parts[2]) and parts[0] == parts[2][:2] and parts[1] == parts[2][2:4]:
                yield parts[2]

    def remove_stale_uploads(self, older_than: float) -> int:
        """Abort multipart uploads and delete temporary objects older than ``older_than``
        seconds (left by killed processes or a store that was down); returns how many."""
        cutoff = time.time() - older_than
        removed = 0
        tmp_prefix = self.tmp_key("")
        for key, upload_id, initiated in self._iter_multipart_uploads(tmp_prefix):
            if initiated.timestamp() < cutoff and self._abort(key, upload_id):
                removed += 1
        for key, modified in self.list_objects(tmp_prefix):
            if modified < cutoff:
                self._delete_key(key)
                removed += 1
        return removed

    def check(self) -> None:
        """Raise ``StorageUnavailable`` unless the bucket answers (the readiness probe):
        one signed HeadBucket, one attempt, short timeouts."""
        with _store_errors("HeadBucket"):
            self._client("probe").head_bucket(Bucket=self.bucket)

    def presigned_get(self, sha256: str, expires_in: int) -> str:
        """A presigned (SigV4) GET URL of the blob, valid ``expires_in`` seconds; only the
        Host header is signed, so a Range header may be added by whoever fetches it."""
        key = self.blob_key(sha256)
        expires_in = int(expires_in)
        if not 1 <= expires_in <= MAX_PRESIGN_SECONDS:
            raise ValueError(f"expires_in must lie between 1 and {MAX_PRESIGN_SECONDS} seconds")
        with _store_errors("presign"):
            return self.client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=expires_in
            )

    def nginx_fetch(self, sha256: str) -> dict[str, str]:
        """How nginx fetches the blob itself: a presigned GET split into the path and query
        it requests (``X-Vimeo-S3-URI``) and the Host it must send (``X-Vimeo-S3-Host``,
        the one signed), and the content hash its cache keys the bytes by
        (``X-Vimeo-Blob``). nginx.conf's upstream ``vimeo_s3`` is the store's address:
        nginx needs no resolver, and keeps its connections to the store open."""
        url = urlsplit(self.presigned_get(sha256, self.presign_seconds))
        return {
            "X-Vimeo-S3-URI": f"{url.path}?{url.query}",
            "X-Vimeo-S3-Host": url.netloc,
            "X-Vimeo-Blob": sha256,
        }

    def accel_headers(self, sha256: str, *, whole: bool = False) -> dict[str, str]:
        """X-Accel-Redirect to nginx.conf's location that proxies the presigned GET, once
        a HEAD found the blob (FileNotFoundError otherwise: no download is used for
        missing bytes; StorageUnavailable when the store does not answer)."""
        if not self.exists(sha256):
            raise FileNotFoundError(sha256)
        return {"X-Accel-Redirect": ACCEL_S3_WHOLE if whole else ACCEL_S3, **self.nginx_fetch(sha256)}

    # -- helpers ---------------------------------------------------------------------------

    def _head(self, key: str) -> dict | None:
        with _store_errors("HeadObject"):
            try:
                return self.client.head_object(Bucket=self.bucket, Key=key)
            except ClientError as exc:
                # HEAD answers carry no body, so the code is the bare status.
                if _status(exc) == 404 or _error_code(exc) in ("404", "NoSuchKey", "NotFound"):
                    return None
                raise

    def _delete_key(self, key: str) -> None:
        with _store_errors("DeleteObject"):
            self.client.delete_object(Bucket=self.bucket, Key=key)

    def _abort(self, key: str, upload_id: str) -> bool:
        """Abort a multipart upload; False when the store no longer knows it."""
        with _store_errors("AbortMultipartUpload"):
            try:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            except ClientError as exc:
                if _error_code(exc) == "NoSuchUpload" or _status(exc) == 404:
                    return False
                raise
        return True

    def _iter_multipart_uploads(self, prefix: str):
        params = {"Bucket": self.bucket, "Prefix": prefix, "MaxUploads": self.list_page_size}
        while True:
            with _store_errors("ListMultipartUploads"):
                try:
                    page = self.client.list_multipart_uploads(**params)
                except ClientError as exc:
                    # rclone, after a restart and before any upload, answers NoSuchUpload
                    # instead of an empty list (deploy/S3-NOTES.md).
                    if _error_code(exc) == "NoSuchUpload":
                        return
                    raise
            for item in page.get("Uploads", ()):
                yield item["Key"], item["UploadId"], item["Initiated"]
            if not page.get("IsTruncated"):
                return
            next_key, next_id = page.get("NextKeyMarker"), page.get("NextUploadIdMarker")
            if not next_key or (next_key, next_id) == (params.get("KeyMarker"), params.get("UploadIdMarker")):
                return  # a store whose markers do not advance: stop rather than loop
            params["KeyMarker"], params["UploadIdMarker"] = next_key, next_id

    def _copy(self, source: str, target: str, size: int, metadata: dict) -> None:
        """Server-side copy of the completed temporary object to its content address."""
        if size <= self.max_single_copy:
            with _store_errors("CopyObject"):
                self.slow_client.copy_object(
                    Bucket=self.bucket, Key=target, CopySource={"Bucket": self.bucket, "Key": source},
                    MetadataDirective="REPLACE", Metadata=metadata, ContentType="application/octet-stream",
                )
            return
        self._multipart_copy(source, target, size, metadata)

    def _multipart_copy(self, source: str, target: str, size: int, metadata: dict) -> None:
        """Beyond CopyObject's 5 GiB: a multipart upload of the target whose parts are
        ranges copied server-side from the source (UploadPartCopy)."""
        client = self.slow_client
        part_size = max(self.copy_part_size, math.ceil(size / MAX_PARTS))
        with _store_errors("CreateMultipartUpload"):
            upload_id = client.create_multipart_upload(
                Bucket=self.bucket, Key=target, Metadata=metadata, ContentType="application/octet-stream"
            )["UploadId"]
        try:
            parts = []
            for number, first in enumerate(range(0, size, part_size), start=1):
                last = min(first + part_size, size) - 1
                with _store_errors("UploadPartCopy"):
                    answer = client.upload_part_copy(
                        Bucket=self.bucket, Key=target, UploadId=upload_id, PartNumber=number,
                        CopySource={"Bucket": self.bucket, "Key": source}, CopySourceRange=f"bytes={first}-{last}",
                    )
                etag = (answer.get("CopyPartResult") or {}).get("ETag")
                if not etag:
                    # rclone answers 200 without copying anything (deploy/S3-NOTES.md):
                    # completing would store an empty object under the content address.
                    raise StorageUnavailable("UploadPartCopy failed: the store copied no part")
                parts.append({"PartNumber": number, "ETag": etag})
            with _store_errors("CompleteMultipartUpload"):
                client.complete_multipart_upload(
                    Bucket=self.bucket, Key=target, UploadId=upload_id, MultipartUpload={"Parts": parts}
                )
        except BaseException:
            try:
                self._abort(target, upload_id)
            except StorageUnavailable:
                pass  # the sweep aborts it later
            raise

    def _verify_size(self, key: str, size: int) -> None:
        """A placed object must have the upload's length; a store that copied it short is
        caught here, and the object is removed rather than served."""
        answer = self._head(key)
        if answer is None or int(answer["ContentLength"]) != size:
            if answer is not None:
                self._delete_key(key)
            raise StorageUnavailable("placing the upload failed: the stored object has the wrong size")


def parse_storage_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` → ``("bucket", "some/prefix/")``."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment:
        raise ValueError("STORAGE_URL must look like s3://bucket/prefix")
    return parts.netloc, _normalise_prefix(parts.path)


def _normalise_prefix(prefix: str) -> str:
    """``/a/b`` or ``a/b/`` → ``a/b/``; ``""`` stays ``""``. Plain segments only."""
    stripped = (prefix or "").strip("/")
    if not stripped:
        return ""
    for segment in stripped.split("/"):
        if segment in (".", "..") or not _PREFIX_SEGMENT.match(segment):
            raise ValueError(f"not a usable key prefix segment: {segment!r}")
    return stripped + "/"


def _format_mtime(mtime: float) -> str:
    """Seconds as rclone's and the AWS tools' ``mtime`` metadata spells them."""
    value = float(mtime)
    if not math.isfinite(value):
        raise ValueError("mtime must be a finite number")
    return str(int(value)) if value.is_integer() else repr(value)
