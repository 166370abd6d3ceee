"""Metadata: files, the content blobs they point at (stored once per SHA-256), published
versions, operator tokens, and the transfers that downloads made."""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import BigInteger, Boolean, DateTime, ForeignKey, Index, Integer, String, Text, TypeDecorator
from sqlalchemy.orm import Mapped, mapped_column

from .extensions import db

# SQLite has no 64-bit autoincrement type other than INTEGER.
BigId = BigInteger().with_variant(Integer, "sqlite")


class UTCDateTime(TypeDecorator):
    """Aware UTC datetimes in Python, naive UTC in the database (SQLite keeps no zone)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None:
            value = value.astimezone(timezone.utc).replace(tzinfo=None)
        return value

    def process_result_value(self, value, dialect):
        if value is not None:
            value = value.replace(tzinfo=timezone.utc)
        return value


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class FileStatus:
    AVAILABLE = "available"
    GONE = "gone"


class GoneReason:
    DOWNLOADED = "downloaded"
    DELETED = "deleted"
    EXPIRED = "expired"


class Blob(db.Model):
    """One stored content. ``refcount`` counts the live files and versions using it; at 0
    the bytes may go once ``release_after`` has passed (the grace period)."""

    __tablename__ = "blobs"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    refcount: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    release_after: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)


class File(db.Model):
    """An uploaded file as its URL sees it: options, counters and state."""

    __tablename__ = "files"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    filehash: Mapped[str] = mapped_column(String(32), unique=True)
    filename: Mapped[str] = mapped_column(String(255))
    content_type: Mapped[str] = mapped_column(String(255))
    size: Mapped[int] = mapped_column(BigInteger)
    # Not a foreign key: gone files keep naming content whose blob row was released.
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    password_hash: Mapped[str | None] = mapped_column(String(255))
    owner_token_hash: Mapped[str] = mapped_column(String(64))
    # 64-bit: an unlimited public file's count passes 2**31 in a long life (nginx counts
    # fast downloads late and in bulk).
    max_downloads: Mapped[int] = mapped_column(BigInteger, default=1)
    downloads: Mapped[int] = mapped_column(BigInteger, default=0)
    status: Mapped[str] = mapped_column(String(16), default=FileStatus.AVAILABLE, index=True)
    gone_reason: Mapped[str | None] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    modified_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    gone_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Bytes handed out by allowed downloads (what was asked for: the range, or all).
    bytes_served: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    # Moves on every change of the password (set, changed, removed). A decision made on
    # metadata that may be cached names the version it saw; the UPDATE that uses a
    # download requires it still current, so the database has the last word on the
    # password too. Signed links carry the version they were issued under.
    access_version: Mapped[int] = mapped_column(Integer, default=0, server_default="0")

    def is_available(self, now: datetime) -> bool:
        """Whether the URL may still serve: not gone, not expired, downloads left."""
        return self.unavailable_reason(now) is None

    def unavailable_reason(self, now: datetime) -> str | None:
        """Why the URL serves no more (a ``GoneReason``), or None while it does. A file
        whose expiry or last download the database has not recorded yet is already gone
        for that reason."""
        if self.status != FileStatus.AVAILABLE:
            return self.gone_reason or GoneReason.DELETED
        if self.expires_at is not None and self.expires_at <= now:
            return GoneReason.EXPIRED
        if self.max_downloads and self.downloads >= self.max_downloads:
            return GoneReason.DOWNLOADED
        return None


class DownloadToken(db.Model):
    """A short-lived signed link (SPEC 3.6): what the token's random id stands for.

    The token handed out carries only this id and its expiry, signed; the id is stored
    hashed. The link works while its file's ``access_version`` is the one it was issued
    under (a password change revokes it) and until its owner revokes it.
    """

    __tablename__ = "download_tokens"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    file_id: Mapped[int] = mapped_column(ForeignKey("files.id"), index=True)
    access_version: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class VersionStatus:
    PUBLISHED = "published"
    RETIRED = "retired"


class Version(db.Model):
    """An immutable published copy of a file's content at one moment (SPEC 3.5).

    It uses no downloads and needs no password; it lives until its file is deleted or
    expires, and holds a reference on the blob so later replacements cannot touch it.
    """

    __tablename__ = "versions"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    version_id: Mapped[str] = mapped_column(String(32), unique=True)
    file_id: Mapped[int] = mapped_column(ForeignKey("files.id"), index=True)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    size: Mapped[int] = mapped_column(BigInteger)
    filename: Mapped[str] = mapped_column(String(255))
    content_type: Mapped[str] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16), default=VersionStatus.PUBLISHED, index=True)
    # The file's Last-Modified when it was published: the version's validator forever.
    modified_at: Mapped[datetime] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    retired_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class ApiToken(db.Model):
    """An operator's bearer token with scopes, made by ``manage.py tokens create``."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(100))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    scopes: Mapped[str] = mapped_column(String(255))  # space-separated
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    @property
    def scope_set(self) -> frozenset[str]:
        return frozenset(self.scopes.split())


class UploadStatus:
    OPEN = "open"
    COMPLETED = "completed"


class ResumableUpload(db.Model):
    """A tus upload (vimeo_api/tus.py): its bytes so far, and the file it will become.

    ``upload_offset`` is what was acknowledged: bytes up to it are on stable storage
    (resumable.py fsyncs before recording it). The file's options are kept as they will
    be applied at completion: the password only as its hash; ``expires_in`` in seconds
    from the completion, None for the configured default and 0 for never. ``filehash``
    is chosen at creation, so that the file's row and this row's completion are one
    commit.
    """

    __tablename__ = "resumable_uploads"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    upload_id: Mapped[str] = mapped_column(String(32), unique=True)
    # None: deferred (tus creation-defer-length) until a PATCH names it.
    upload_length: Mapped[int | None] = mapped_column(BigInteger)
    upload_offset: Mapped[int] = mapped_column(BigInteger, default=0)
    status: Mapped[str] = mapped_column(String(16), default=UploadStatus.OPEN, index=True)
    # The client's Upload-Metadata, echoed on HEAD, with the password's value left out.
    upload_metadata: Mapped[str | None] = mapped_column(Text)
    filename: Mapped[str] = mapped_column(String(255))
    content_type: Mapped[str] = mapped_column(String(255))
    password_hash: Mapped[str | None] = mapped_column(String(255))
    max_downloads: Mapped[int | None] = mapped_column(Integer)
    expires_in: Mapped[int | None] = mapped_column(BigInteger)
    filehash: Mapped[str] = mapped_column(String(32), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Upload-Expires: unfinished past it, the upload is gone (the sweep removes it);
    # completed, its row (and so the answer to HEAD) is kept until then.
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The chunk storage's own bookkeeping of ``upload_offset``, recorded in the same
    # commit: on a bucket (resumable_s3.py) JSON naming the multipart upload, its parts
    # (number, ETag, size, CRC32) and the SHA-256 state at the offset; None on local disk.
    chunk_state: Mapped[str | None] = mapped_column(Text)


class Transfer(db.Model):
    """One transfer of a file's bytes that the app decided: a counted download, or the
    resumption of one (``resumed_from``) that used no download.

    The app learns what was sent after the answer: its own sender counts what it
    yielded; for an answer nginx sent (X-Accel-Redirect) nginx's transfer log says it,
    read by the sweep and by the owner's listing (``transfer_log``). ``bytes_sent`` and
    ``sender_completed`` stay NULL until then. ``cut_off`` is set when the same client
    resumes: whatever the sender believed, the client lacked bytes.

    ``client_key`` recognises the same client for a resumption (an HMAC of its address
    under a server secret, so the table holds no address unless ``client_address`` is
    kept by ``DOWNLOADS_CLIENT_ADDRESS``).
    """

    __tablename__ = "transfers"
    __table_args__ = (Index("ix_transfers_file_id_at", "file_id", "at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    file_id: Mapped[int] = mapped_column(ForeignKey("files.id"))
    sha256: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # The first byte of the answer (0 unless a range) and the bytes it was to carry.
    range_start: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_expected: Mapped[int] = mapped_column(BigInteger)
    bytes_sent: Mapped[int | None] = mapped_column(BigInteger)
    sender_completed: Mapped[bool | None] = mapped_column(Boolean)
    cut_off: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")
    # The counted transfer this one resumes (the first of its chain); NULL: counted.
    resumed_from: Mapped[int | None] = mapped_column(BigId)
    client_key: Mapped[str] = mapped_column(String(64))
    client_address: Mapped[str | None] = mapped_column(String(64))

    @property
    def completed(self) -> bool:
        """Every byte was sent and no resumption says the client lacked some."""
        return bool(self.sender_completed) and not self.cut_off
