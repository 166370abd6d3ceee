"""Metadata: files, and the content blobs they point at (stored once per SHA-256)."""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import BigInteger, DateTime, ForeignKey, Integer, String, TypeDecorator
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
        if self.status != FileStatus.AVAILABLE:
            return False
        if self.expires_at is not None and self.expires_at <= now:
            return False
        return not (self.max_downloads and self.downloads >= self.max_downloads)


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
