"""Unfinished resumable (tus) uploads in the bucket: each one an S3 multipart upload.

The resumable-storage interface (vimeo_api/resumable_storage.py) over S3, so that any
node can take any chunk of any upload:

- An upload is a multipart upload at ``<prefix>tus/<upload_id>``, started at its first
  full part. Part *n* always holds the bytes ``[(n-1)·P, n·P)`` of the file, P the part
  size (``S3_PART_SIZE``, 8 MiB: storage_s3.py says why), so a part sent again after an
  interruption carries the same bytes as before: rclone refuses a part number sent again
  with other bytes, and aborts the whole upload (deploy/S3-NOTES.md).
- Bytes of a chunk past the last full part (the *tail*, smaller than a part) are kept as
  a small object ``<prefix>tus/<upload_id>.tail-<offset>`` before the offset is
  acknowledged, and read back by whichever node takes the next chunk. The tail's key
  names its offset: a worker killed after writing a new tail never overwrote the one the
  row still names. (A tail on the node's disk would be cheaper, but a resume landing on
  another node would then find no tail; S3-NOTES.md has the trade-off.)
- The row's ``chunk_state`` (recorded in the commit that records the offset) is JSON:
  the multipart upload's id, its parts (number, ETag, size, CRC32) and the SHA-256 state
  at the offset (vimeo_api/sha256_state.py): the bytes sent cannot be read back from an
  unfinished multipart upload, so the hash travels with the row.
- A chunk with ``Upload-Checksum`` is verified before any of its parts is sent
  (``verify_first``): a part cannot be taken back.
- Completion sends the rest as the last part, completes the multipart upload and copies
  it to its content address (``S3Storage.place``: CopyObject up to 5 GiB; beyond, a
  multipart copy that rclone cannot do), or finds the content stored already and copies
  nothing. Termination, expiry and ``uploads abort`` (``discard``) abort the multipart
  upload and delete every object under ``<prefix>tus/<upload_id>``, tails of killed
  workers included.
"""

from __future__ import annotations

import base64
import json
import logging
import re
from collections.abc import Iterable, Iterator

from .resumable_storage import UPLOAD_ID, Interrupted
from .sha256_state import Sha256State
from .storage import CHUNK, StorageUnavailable
from .storage_s3 import MAX_PARTS, S3Storage, S3Upload, _store_errors

log = logging.getLogger(__name__)

AREA = "tus/"
# A free space the bucket never runs out of (S3 has no quota the API can read).
UNBOUNDED = 1 << 62
_TAIL = re.compile(r"^\.tail-([0-9]{1,19})$")


class S3ResumableStorage:
    """Unfinished uploads under ``<prefix>tus/`` of the storage's bucket; one writer per
    upload by ``locks`` (resumable_storage.AdvisoryLocks across nodes)."""

    def __init__(self, storage: S3Storage, locks):
        self.storage = storage
        self.locks = locks

    def key(self, upload_id: str) -> str:
        """Where the upload's multipart upload (and, once completed, its object) lives."""
        if not UPLOAD_ID.match(upload_id):
            raise ValueError("not an upload id")
        return f"{self.storage.prefix}{AREA}{upload_id}"

    def tail_key(self, upload_id: str, offset: int) -> str:
        """The object holding the bytes after the last full part, up to ``offset``."""
        return f"{self.key(upload_id)}.tail-{int(offset)}"

    def max_length(self) -> int:
        """The largest upload the store takes: 10,000 parts."""
        return MAX_PARTS * self.storage.part_size

    def create(self, upload_id: str) -> None:
        """Nothing to make yet: the multipart upload starts with the first full part."""
        self.key(upload_id)

    def open_resumable(self, upload_id: str) -> "S3Resumable":
        """The upload, locked (``UploadLocked`` at once when another request holds it)."""
        self.key(upload_id)
        return S3Resumable(self, upload_id, self.locks.acquire(upload_id))

    def iter_uploads(self) -> Iterator[tuple[str, float]]:
        """(upload id, time) of what is stored under ``tus/``: multipart uploads (their
        initiation) and objects (their Last-Modified), for the sweep's orphan pass."""
        storage = self.storage
        area = f"{storage.prefix}{AREA}"
        for key, _upload_id, initiated in storage._iter_multipart_uploads(area):
            name = key[len(area):]
            if UPLOAD_ID.match(name):
                yield name, initiated.timestamp()
        for key, modified in self.storage.list_objects(area):
            name = key[len(area):]
            upload_id, rest = name[:32], name[32:]
            if UPLOAD_ID.match(upload_id) and (not rest or _TAIL.match(rest)):
                yield upload_id, modified

    def free_space(self) -> int:
        """A bucket has no free space to ask about."""
        return UNBOUNDED



class S3Resumable:
    """One upload, locked for the holder of this handle until ``close``."""

    # A part sent cannot be taken back: a chunk's checksum is checked before it is sent.
    verify_first = True

    def __init__(self, owner: S3ResumableStorage, upload_id: str, lock):
        self._owner = owner
        self._storage = owner.storage
        self.upload_id = upload_id
        self._lock = lock
        self._sink: S3Upload | None = None
        self._hash: Sha256State | None = None
        self._offset = 0  # the acknowledged offset the handle was resumed at
        self._state: str | None = None  # its recorded bookkeeping
        self._tail = 0  # bytes of the recorded tail
        self._tail_loaded = False
        self._pending: str | None = None  # what durable_state returned, until recorded

    # -- the recorded state --------------------------------------------------------------

    def resume(self, offset: int, state: str | None = None) -> None:
        """Go on from the acknowledged ``offset`` and the bookkeeping recorded with it.
        Parts or tails a killed worker sent past it are ignored: the parts are sent again
        with the same bytes, the tails are removed with the upload."""
        parsed = _parse_state(state) if state else {"multipart": None, "parts": [], "sha256": None}
        parts = parsed["parts"]
        part_size = parts[0]["Size"] if parts else self._storage.part_size
        if any(p["PartNumber"] != n or p["Size"] != part_size for n, p in enumerate(parts, start=1)):
            raise StorageUnavailable("the upload's recorded parts are not whole parts in order")
        tail = offset - len(parts) * part_size
        if not 0 <= tail < part_size or (parts and not parsed["multipart"]):
            raise StorageUnavailable("the upload's recorded parts do not match its offset")
        if parsed["sha256"] is not None:
            self._hash = Sha256State.restore(parsed["sha256"])
        elif offset == 0:
            self._hash = Sha256State()
        else:
            raise StorageUnavailable("the upload's hash state is missing")
        self._offset, self._state, self._tail = offset, state, tail
        self._tail_loaded = tail == 0
        self._pending = None
        self._sink = S3Upload.resumed(
            self._storage, self._owner.key(self.upload_id), parsed["multipart"],
            [{k: v for k, v in p.items() if k != "Size"} for p in parts], offset - tail, part_size,
        )

    def saved_hash(self) -> Sha256State:
        """The SHA-256 of the bytes up to the offset, restored from the row."""
        return self._hash

    def length(self) -> int:
        return self._sink.size if self._tail_loaded else self._offset

    def truncate(self, offset: int) -> None:
        """Drop what this request appended (a refused chunk): back to the recorded state.
        Parts it sent stay in the store until sent again (the same bytes: a verified chunk
        is the client's file) or the upload is discarded."""
        if offset != self._offset:
            raise ValueError("an upload in the bucket can only go back to its acknowledged offset")
        self.resume(self._offset, self._state)

    def append(self, stream, offset: int, limit: int, observers: Iterable = ()) -> int:
        """Up to ``limit`` bytes from ``stream``, each block to every observer first; full
        parts are sent as they fill. The rest stays in memory until ``durable_state`` or
        ``finish``. A stream that fails raises ``Interrupted`` with how far it got."""
        self._load_tail()
        if offset != self._sink.size:
            raise ValueError("append at the upload's length only")
        observers = tuple(observers)
        position, end = offset, offset + limit
        while position < end:
            try:
                block = stream.read(min(CHUNK, end - position))
            except Exception as exc:  # the client went away (werkzeug's ClientDisconnected, a reset)
                raise Interrupted(position, exc) from exc
            if not block:
                break
            for observer in observers:
                observer.update(block)
            self._sink.write(block)
            position += len(block)
        return position

    def read(self, start: int, stop: int) -> Iterator[bytes]:
        """Never needed (``saved_hash`` is always there): an unfinished multipart
        upload's parts cannot be read back."""
        raise NotImplementedError("the parts of an unfinished multipart upload cannot be read")

    def durable_state(self) -> str | None:
        """Store the tail (the bytes after the last full part) and return the
        bookkeeping to record with the new offset."""
        sink = self._sink
        end = sink.size
        if end == self._offset:
            return self._state  # nothing appended: as recorded
        if self._pending is None:
            rest = sink.rest
            if len(rest):
                storage = self._storage
                with _store_errors("PutObject"):
                    storage.client.put_object(
                        Bucket=storage.bucket, Key=self._owner.tail_key(self.upload_id, end), Body=bytes(rest),
                        ContentType="application/octet-stream",
                    )
            self._pending = json.dumps({
                "multipart": sink.upload_id,
                "parts": [[p["PartNumber"], p["ETag"], sink.part_size, p.get("ChecksumCRC32")] for p in sink.parts],
                "sha256": base64.b64encode(self._hash.save()).decode("ascii"),
            }, separators=(",", ":"))
        return self._pending

    def recorded(self) -> None:
        """The new offset is committed: the tail it superseded goes (best effort; the
        upload's discard removes whatever is left)."""
        end = self._sink.size
        if end == self._offset or self._pending is None:
            return
        if self._tail:
            self._delete_quietly(self._owner.tail_key(self.upload_id, self._offset))
        self._offset, self._tail, self._state = end, len(self._sink.rest), self._pending
        self._pending = None

    def finish(self, sha256: str, size: int) -> S3Upload:
        """The complete upload, for ``S3Storage.place`` (through ``files.create``)."""
        self._load_tail()
        if self._sink.size != size:
            raise ValueError("the upload is not complete")
        self._sink.sha256 = sha256
        return self._sink

    def discard(self) -> None:
        """Remove the multipart upload and every object of the upload (its tails, the
        completed object). Never raises: what a store that is down keeps is an orphan
        the sweep removes later (no row knows it any more)."""
        storage = self._storage
        key = self._owner.key(self.upload_id)
        try:
            for found, multipart, _initiated in storage._iter_multipart_uploads(key):
                if found == key:
                    storage._abort(found, multipart)
            for found, _modified in self._owner.storage.list_objects(key):
                storage._delete_key(found)
        except StorageUnavailable as exc:
            log.warning("could not remove resumable upload %s from the bucket: %s", self.upload_id, exc)
            return
        self._lock.forget()

    def close(self) -> None:
        """Release the lock and the part buffer."""
        if self._sink is not None:
            self._sink._part = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- helpers -------------------------------------------------------------------------

    def _load_tail(self) -> None:
        """Read the recorded tail back into the part buffer (once, when bytes follow)."""
        if self._tail_loaded:
            return
        storage = self._storage
        key = self._owner.tail_key(self.upload_id, self._offset)
        with _store_errors("GetObject"):
            body = storage.client.get_object(Bucket=storage.bucket, Key=key)["Body"]
            try:
                data = body.read(self._tail + 1)
            finally:
                body.close()
        if len(data) != self._tail:
            raise StorageUnavailable("the upload's tail in the bucket has the wrong length")
        self._sink = S3Upload.resumed(
            storage, self._sink.key, self._sink.upload_id, self._sink.parts, self._offset,
            self._sink.part_size, rest=data,
        )
        self._tail_loaded = True

    def _delete_quietly(self, key: str) -> None:
        try:
            self._storage._delete_key(key)
        except StorageUnavailable as exc:
            log.warning("could not delete a superseded tail of upload %s: %s", self.upload_id, exc)


def _parse_state(state: str) -> dict:
    """The row's ``chunk_state`` as ``resume`` needs it."""
    try:
        raw = json.loads(state)
        parts = [
            {"PartNumber": int(n), "ETag": str(etag), "Size": int(size),
             **({"ChecksumCRC32": str(crc)} if crc else {})}
            for n, etag, size, crc in raw["parts"]
        ]
        digest = base64.b64decode(raw["sha256"]) if raw.get("sha256") else None
        return {"multipart": raw.get("multipart"), "parts": parts, "sha256": digest}
    except (ValueError, KeyError, TypeError) as exc:
        raise StorageUnavailable("the upload's recorded state is unreadable") from exc

