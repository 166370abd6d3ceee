"""Moving a deployment's bytes from local disk into its bucket (``manage.py storage
migrate``), so that an existing user can switch to S3 storage (README, "From local disk
to a bucket").

Every blob a row knows is copied from the local directory to the backend the app is
configured with, streamed in parts (memory stays flat) and hashed on the way: a copy
whose SHA-256 or size is not the one its name and row record is discarded and reported,
never placed. A blob the bucket already holds with the right size is skipped, so a run
that was stopped resumes where it left off and a second run copies only what was
uploaded locally since. Rows are read in keyset batches, so memory stays flat however
many there are. Nothing here deletes or changes anything local.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from sqlalchemy import func, select

from .extensions import db
from .models import Blob
from .storage import CHUNK, LocalStorage, Storage


@dataclass
class MigrationReport:
    """What one run did: blobs copied, found already in place, missing locally, or whose
    local bytes are not what their name says (those two are problems: exit 1)."""

    blobs: int = 0
    copied: int = 0
    already: int = 0
    bytes_copied: int = 0
    missing: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "blobs": self.blobs, "copied": self.copied, "already": self.already,
            "bytes_copied": self.bytes_copied, "missing": self.missing, "corrupt": self.corrupt,
        }

    @property
    def problems(self) -> int:
        return len(self.missing) + len(self.corrupt)


def totals() -> tuple[int, int]:
    """(blobs, bytes) the rows know: what a run has to go through."""
    count, size = db.session.execute(select(func.count(Blob.sha256), func.coalesce(func.sum(Blob.size), 0))).one()
    db.session.rollback()
    return int(count), int(size)


def iter_blobs(batch_size: int = 500) -> Iterator[tuple[str, int]]:
    """(sha256, size) of every blob row, in hash order, read in keyset batches."""
    after = ""
    while True:
        rows = db.session.execute(
            select(Blob.sha256, Blob.size).where(Blob.sha256 > after).order_by(Blob.sha256).limit(batch_size)
        ).all()
        # Nothing is written here: no snapshot or lock is held while blobs are copied.
        db.session.rollback()
        yield from ((row.sha256, row.size) for row in rows)
        if len(rows) < batch_size:
            return
        after = rows[-1].sha256


def migrate(source: LocalStorage, target: Storage, progress: Callable[[int], None] = lambda n: None) -> MigrationReport:
    """Copy every blob the rows know from ``source`` into ``target``; ``progress(n)`` is
    told the bytes of each blob dealt with. ``StorageUnavailable`` stops the run (a rerun
    resumes)."""
    report = MigrationReport()
    for sha256, size in iter_blobs():
        report.blobs += 1
        stat = target.stat(sha256)
        if stat is not None and stat.size == size:
            report.already += 1
        else:
            outcome = _copy(source, target, sha256, size)
            if outcome == "copied":
                report.copied += 1
                report.bytes_copied += size
            elif outcome == "already":
                report.already += 1
            else:
                getattr(report, outcome).append(sha256)
        progress(size)
    return report


def _copy(source: LocalStorage, target: Storage, sha256: str, size: int) -> str:
    """One blob: "copied", "already" (placed meanwhile), "missing" or "corrupt"."""
    local = source.stat(sha256)
    if local is None:
        return "missing"
    with target.new_upload() as upload:
        try:
            with source.open(sha256) as blob:
                while chunk := blob.read(CHUNK):
                    upload.write(chunk)
        except FileNotFoundError:
            return "missing"
        if upload.sha256 != sha256 or upload.size != size:
            return "corrupt"  # closing the upload discards what was sent
        # The local mtime is the first upload's Last-Modified (storage.py, place).
        return "copied" if target.place(upload, local.mtime) else "already"
