"""Immutable published versions (SPEC 3.5): a frozen reference to a file's content.

A version holds its own reference on the blob, so replacing the file's content later
leaves it untouched. It uses no downloads and needs no password. It lives until its file
is deleted or expires (a file used up by its download limit keeps its versions until its
expiry); then it is retired and its reference released.
"""

from __future__ import annotations

import secrets

from sqlalchemy import select, update

from . import blobs, events
from .extensions import db
from .models import File, FileStatus, GoneReason, Version, VersionStatus, utcnow


def publish(file: File) -> Version:
    """Freeze the file's current content as a new version."""
    now = utcnow()
    # The file is available, so its blob has a reference and cannot be released under us.
    blobs.add_ref(file.sha256)
    version = Version(
        version_id=secrets.token_hex(16),
        file_id=file.id,
        sha256=file.sha256,
        size=file.size,
        filename=file.filename,
        content_type=file.content_type,
        status=VersionStatus.PUBLISHED,
        modified_at=file.modified_at,
        created_at=now,
    )
    db.session.add(version)
    db.session.commit()
    return version


def find(version_id: str) -> tuple[Version, File] | None:
    row = db.session.execute(
        select(Version, File).join(File, File.id == Version.file_id).where(Version.version_id == version_id)
    ).first()
    return None if row is None else (row[0], row[1])


def is_available(version: Version, file: File, now) -> bool:
    if version.status != VersionStatus.PUBLISHED:
        return False
    if file.status == FileStatus.GONE and file.gone_reason in (GoneReason.DELETED, GoneReason.EXPIRED):
        return False
    return file.expires_at is None or file.expires_at > now


def retire_for_files(file_ids: list[int]) -> int:
    """Retire the published versions of these files and release their references."""
    if not file_ids:
        return 0
    now = utcnow()
    rows = db.session.execute(
        update(Version)
        .where(Version.file_id.in_(file_ids), Version.status == VersionStatus.PUBLISHED)
        .values(status=VersionStatus.RETIRED, retired_at=now)
        .returning(Version.sha256, Version.version_id)
    ).all()
    released = [row.sha256 for row in rows if blobs.release_ref(row.sha256, now)]
    db.session.commit()
    events.announce_versions_retired(row.version_id for row in rows)
    events.announce_blobs_released(released)
    return len(rows)


def retire_due(batch_size: int) -> int:
    """One batch of versions whose file was deleted or has expired (for the sweep)."""
    now = utcnow()
    file_ids = db.session.execute(
        select(Version.file_id)
        .join(File, File.id == Version.file_id)
        .where(
            Version.status == VersionStatus.PUBLISHED,
            (File.gone_reason.in_([GoneReason.DELETED, GoneReason.EXPIRED])) | (File.expires_at <= now),
        )
        .distinct()
        .limit(batch_size)
    ).scalars().all()
    db.session.rollback()
    return retire_for_files(list(file_ids))
